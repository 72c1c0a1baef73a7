"""TF Serving's REST JSON <-> the request/response protos the gRPC API carries.

REST decodes a `:predict` body into a `PredictRequest` (inputs as TensorProtos
typed by the signature, as tensorflow_serving/util/json_tensor.cc does) and the
request layer (serving/service.py) handles it exactly as a gRPC request; the
outputs come back as JSON here. Formats:

  {"signature_name": s, "instances": [...]}  row format      -> {"predictions": [...]}
  {"signature_name": s, "inputs": {...}}     columnar format -> {"outputs": ...}

Strings travel as JSON strings (UTF-8) or {"b64": "..."}; string outputs whose
alias ends in `_bytes` go back base64-encoded, others as text (bad UTF-8
replaced). Everything a client can send is walked without recursion, so a
200,000-deep array is a 400 with a message, and every failure is a
RequestError (INVALID_ARGUMENT): `decode_body`, `predict_request` and
`value_to_tensor_proto` raise nothing else (tests/test_serving_fuzz.py).
"""

import base64
import json
from typing import Any, Dict, List, Tuple

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

from serving.limits import Limits, invalid

# The deepest array we walk; TF Serving's own parser (RapidJSON) is iterative
# too and stops at its own limit. Our signatures have rank <= 2.
MAX_DEPTH = 32

_NUMERIC = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_HALF: np.float16, types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
}


def _type_name(dtype: int) -> str:
  return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() \
      else str(dtype)


def decode_body(body: bytes) -> Dict[str, Any]:
  """The request body -> a JSON object, or INVALID_ARGUMENT naming what is wrong."""
  try:
    text = body.decode('utf-8')
  except UnicodeDecodeError as e:
    raise invalid(f'JSON Parse error: the body is not UTF-8 (byte {e.start})') from None
  try:
    request = json.loads(text) if text.strip() else None
  except RecursionError:
    raise invalid('JSON Parse error: nested too deeply') from None
  except ValueError as e:
    raise invalid(f'JSON Parse error: {e}') from None
  if not isinstance(request, dict):
    raise invalid('JSON Value: ' + _short(request) + ' Is not object')
  return request


def _short(value: Any) -> str:
  try:
    return json.dumps(value)[:80]
  except (ValueError, RecursionError):
    return type(value).__name__


# ------------------------------------------------------------------ JSON value -> TensorProto
def _shape_of(alias: str, value: Any) -> List[int]:
  shape = []
  while isinstance(value, list):
    if len(shape) >= MAX_DEPTH:
      raise invalid(f'Input "{alias}" is nested deeper than {MAX_DEPTH} levels')
    shape.append(len(value))
    if not value:
      break
    value = value[0]
  return shape


def _flatten(alias: str, value: Any, shape: List[int], limit: int) -> List[Any]:
  """Leaves in row-major order; every list must match `shape` (no ragged tensors)."""
  count = 1
  for d in shape:
    count *= d
  if count > limit:
    raise invalid(f'Input "{alias}" has {count} values; the limit is {limit} '
                  '(--max_tensor_elements)')
  flat: List[Any] = []
  stack = [(value, 0)]
  while stack:
    item, depth = stack.pop()
    if depth == len(shape):
      if isinstance(item, list):
        raise invalid(f'Input "{alias}" is ragged: a list where a value was expected '
                      f'(shape {shape})')
      flat.append(item)
      continue
    if not isinstance(item, list) or len(item) != shape[depth]:
      raise invalid(f'Input "{alias}" is ragged: expected a list of {shape[depth]} at depth '
                    f'{depth} (shape {shape})')
    stack.extend((child, depth + 1) for child in reversed(item))
  return flat


def _string(alias: str, item: Any) -> bytes:
  if isinstance(item, str):
    return item.encode('utf-8', errors='surrogatepass')
  if isinstance(item, dict):
    if set(item) == {'b64'} and isinstance(item['b64'], str):
      try:
        return base64.b64decode(item['b64'], validate=True)
      except ValueError:
        raise invalid(f'Unable to base64 decode "b64" value of input "{alias}"') from None
    raise invalid(f'Expecting a string or {{"b64": ...}} object for input "{alias}"')
  raise invalid(f'Expecting a string value for input "{alias}" but got {_short(item)[:40]}')


def value_to_tensor_proto(alias: str, value: Any, dtype: int,
                          limits: Limits = Limits()) -> tensor_pb2.TensorProto:
  """One input's JSON value -> TensorProto of the signature's dtype."""
  shape = _shape_of(alias, value)
  flat = _flatten(alias, value, shape, limits.max_tensor_elements)
  proto = tensor_pb2.TensorProto(dtype=dtype)
  for d in shape:
    proto.tensor_shape.dim.add(size=d)
  if dtype == types_pb2.DT_STRING:
    proto.string_val.extend(_string(alias, item) for item in flat)
  elif dtype == types_pb2.DT_BOOL:
    if any(not isinstance(x, bool) for x in flat):
      raise invalid(f'Expecting true/false values for input "{alias}"')
    proto.bool_val.extend(flat)
  elif dtype in _NUMERIC:
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in flat):
      raise invalid(f'Expecting numeric values for input "{alias}" ({_type_name(dtype)})')
    np_dtype = _NUMERIC[dtype]
    if np.issubdtype(np_dtype, np.integer):
      info = np.iinfo(np_dtype)
      if any(isinstance(x, float) and not x.is_integer() for x in flat):
        raise invalid(f'Expecting integer values for input "{alias}" ({_type_name(dtype)})')
      if any(not info.min <= x <= info.max for x in flat):
        raise invalid(f'Failed to convert input "{alias}" to {_type_name(dtype)}: '
                      'a value is out of range')
      array = np.array([int(x) for x in flat], dtype=np_dtype)
    else:
      with np.errstate(over='ignore'):
        array = np.array(flat, dtype=np.float64).astype(np_dtype)
    proto.tensor_content = array.astype(np.dtype(np_dtype).newbyteorder('<')).tobytes()
  else:
    raise invalid(f'Input "{alias}" has dtype {_type_name(dtype)}, which REST does not carry')
  return proto


# ------------------------------------------------------------------ request body -> PredictRequest
def signature_name(request: Dict[str, Any]) -> str:
  name = request.get('signature_name', '')
  if not isinstance(name, str):
    raise invalid("'signature_name' key must be a string value.")
  return name


def predict_request(body: Dict[str, Any], spec: model_pb2.ModelSpec, signature_name: str,
                    input_dtypes: Dict[str, int], limits: Limits = Limits()
                    ) -> Tuple[predict_pb2.PredictRequest, str]:
  """A decoded `:predict` body -> (PredictRequest, 'row' | 'columnar')."""
  has_instances, has_inputs = 'instances' in body, 'inputs' in body
  if has_instances == has_inputs:
    raise invalid("Missing 'inputs' or 'instances' key" if not has_instances else
                  "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists")
  names = sorted(input_dtypes)
  single = names[0] if len(names) == 1 else None
  if has_inputs:
    fmt, value = 'columnar', body['inputs']
    if isinstance(value, dict) and not (single and set(value) == {'b64'}):
      named = value
    elif single:
      named = {single: value}
    else:
      raise invalid(f"'inputs' must be an object keyed by the signature's inputs "
                    f"{{{','.join(names)}}}")
  else:
    fmt, instances = 'row', body['instances']
    if not isinstance(instances, list) or not instances:
      raise invalid("'instances' must be a non-empty list")
    if len(instances) > limits.max_batch_rows:
      raise invalid(f"'instances' has {len(instances)} rows; the limit is "
                    f'{limits.max_batch_rows} (--max_batch_rows)')
    named = {}
    for i, item in enumerate(instances):
      if isinstance(item, dict) and not (single and set(item) == {'b64'}):
        if i and set(item) != set(named):
          raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                        f"keys {sorted(item)} differ from the first element's {sorted(named)}")
        for k, v in item.items():
          named.setdefault(k, []).append(v)
      elif single:
        named.setdefault(single, []).append(item)
      else:
        raise invalid(f"Expecting object but got {type(item).__name__} at item {i} of "
                      f"'instances' list: signature has several inputs {{{','.join(names)}}}")
  request = predict_pb2.PredictRequest()
  request.model_spec.CopyFrom(spec)
  request.model_spec.signature_name = signature_name
  for alias, value in named.items():
    if not isinstance(alias, str):
      raise invalid('input names must be strings')
    if alias in input_dtypes:
      request.inputs[alias].CopyFrom(
          value_to_tensor_proto(alias, value, input_dtypes[alias], limits))
    else:   # not in the signature: the request layer names it as extra
      request.inputs[alias].dtype = types_pb2.DT_STRING
      request.inputs[alias].tensor_shape.dim.add(size=0)
  return request, fmt


# ------------------------------------------------------------------ outputs -> JSON
def _value_to_json(alias: str, value: Any) -> Any:
  if isinstance(value, np.ndarray):
    if value.ndim:
      return [_value_to_json(alias, v) for v in value]
    return _value_to_json(alias, value.item())
  if isinstance(value, bytes):
    if alias.endswith('_bytes'):
      return {'b64': base64.b64encode(value).decode('ascii')}
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.generic):
    return value.item()
  return value


def outputs_to_json(outputs: Dict[str, np.ndarray], fmt: str) -> Dict[str, Any]:
  if fmt == 'columnar':
    if len(outputs) == 1:
      (alias, value), = outputs.items()
      return {'outputs': _value_to_json(alias, value)}
    return {'outputs': {k: _value_to_json(k, v) for k, v in outputs.items()}}
  batch = None
  for alias, value in outputs.items():
    size = value.shape[0] if value.ndim else None
    if size is None or (batch is not None and size != batch):
      raise invalid(f'Tensor name: {alias} has inconsistent batch size: '
                    f'{size if size is not None else "<scalar>"} expecting: {batch}')
    batch = size
  if len(outputs) == 1:
    (alias, value), = outputs.items()
    return {'predictions': [_value_to_json(alias, row) for row in value]}
  return {'predictions': [{k: _value_to_json(k, v[i]) for k, v in outputs.items()}
                          for i in range(batch)]}
