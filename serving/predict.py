"""Runs one signature of a loaded version on request tensors, with TF Serving's checks.

Shared by the gRPC Predict handler and the REST `:predict` handler so that both
APIs validate the same way and fail with the same codes and messages:

* unknown signature -> FAILED_PRECONDITION `Serving signature key "x" not found.`
* missing/extra inputs -> INVALID_ARGUMENT `input size does not match signature: ...`
  (TF Serving's exact text: counts, both key sets, what was extra and missing)
* wrong dtype -> INVALID_ARGUMENT `Expects arg[i] to be float but string is provided`
  (the TF runtime's text, which TF Serving passes through)
* wrong shape -> INVALID_ARGUMENT naming the input, the signature's shape and the sent one
* op errors (e.g. the model's own `tf.debugging` asserts) keep the TF error code.
* limits (serving/limits.py) before anything is allocated: `tensor_proto_to_input`
  decodes a TensorProto itself, from the values it carries, and refuses a
  declared shape that disagrees with them; `run` checks rows, string bytes,
  work and temperature before the graph sees a tensor.

The signature runs in the calling thread, under the request's `Call` so that a
deadline or a client that went away cancels it; TensorFlow releases the GIL
while it computes, so one slow request does not hold up the others.
"""

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2

from serving.limits import Call, Limits, finite_temperature, invalid
from serving.models import DEFAULT_SIGNATURE, GRPC_CODE_BY_NUMBER, RequestError, Servable

# "...message\n\t [[{{node foo}}]]" and the "Graph execution error:" preamble are
# noise for a client; the first line of the op's message is what it needs.
_NODE_SUFFIX = re.compile(r'\s*\[\[\{\{(function_)?node [^\n]*$', re.S)
_DETECTED_AT = re.compile(r'Detected at node .*?<stack traces unavailable>\s*', re.S)


def dtype_text(dtype: tf.DType) -> str:
  """TF's runtime spelling of a dtype ('float', 'string', 'int32'), as in its messages."""
  return types_pb2.DataType.Name(dtype.as_datatype_enum)[3:].lower()


def signature_def(servable: Servable, signature_name: str):
  name = signature_name or DEFAULT_SIGNATURE
  if name not in servable.signature_defs:
    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                       f'Serving signature key "{name}" not found.')
  return name, servable.signature_defs[name]


def shape_text(shape: tensor_shape_pb2.TensorShapeProto) -> str:
  if shape.unknown_rank:
    return '<unknown>'
  return '[' + ','.join('?' if d.size < 0 else str(d.size) for d in shape.dim) + ']'


def _check_inputs_match(signature, sent: Iterable[str]) -> None:
  sent = set(sent)
  wanted = set(signature.inputs)
  if sent != wanted:
    def join(keys):
      return ','.join(sorted(keys))
    raise RequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f'input size does not match signature: {len(sent)}!={len(wanted)} '
        f'len({{{join(sent)}}}) != len({{{join(wanted)}}}). '
        f'Sent extra: {{{join(sent - wanted)}}}. Missing but required: {{{join(wanted - sent)}}}.')


def _check_tensor(index: int, alias: str, info, array: np.ndarray, dtype: tf.DType) -> None:
  want = tf.dtypes.as_dtype(info.dtype)
  if dtype != want:
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                       f'Expects arg[{index}] to be {dtype_text(want)} but {dtype_text(dtype)} is provided '
                       f'(input "{alias}")')
  shape = info.tensor_shape
  if shape.unknown_rank:
    return
  dims = [d.size for d in shape.dim]
  if len(dims) != array.ndim or any(w >= 0 and w != g for w, g in zip(dims, array.shape)):
    got = '[' + ','.join(str(s) for s in array.shape) + ']'
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                       f'input "{alias}" must have shape {shape_text(shape)} '
                       f'(the signature\'s; ? = any size) but has shape {got}')


def op_error(e: tf.errors.OpError) -> RequestError:
  message = _NODE_SUFFIX.sub('', e.message).strip()
  message = message.replace('Graph execution error:', '').strip()
  message = _DETECTED_AT.sub('', message).strip()
  return RequestError(GRPC_CODE_BY_NUMBER.get(e.error_code, grpc.StatusCode.UNKNOWN), message)


def check_work(inputs: Mapping[str, Tuple[np.ndarray, tf.DType]], limits: Limits) -> None:
  """Rows, string bytes, rows x (longest string + num_chars), temperature: before the graph."""
  rows, longest, steps = 0, 0, 0
  for alias in sorted(inputs):
    array, dtype = inputs[alias]
    if array.ndim:
      if array.shape[0] > limits.max_batch_rows:
        raise invalid(f'input "{alias}" has {array.shape[0]} rows; the limit is '
                      f'{limits.max_batch_rows} (--max_batch_rows)')
      rows = max(rows, array.shape[0])
    if dtype == tf.string and array.size:
      longest = max(longest, max(len(v) for v in array.ravel()))
    if array.ndim == 0 and alias == 'num_chars' and dtype.is_integer:
      steps = int(array)
      if steps < 0:
        raise invalid(f'num_chars must be >= 0, got {steps}')
    if array.ndim == 0 and alias == 'temperature' and dtype.is_floating:
      finite_temperature(float(array))
  work = max(rows, 1) * (longest + steps)
  if work > limits.max_request_work:
    raise invalid(f'request asks for {work} character steps (rows {max(rows, 1)} x (longest '
                  f'string {longest} + num_chars {steps})); the limit is {limits.max_request_work} '
                  '(--max_request_work)')


def run(servable: Servable, signature_name: str,
        inputs: Mapping[str, Tuple[np.ndarray, tf.DType]],
        output_filter: Iterable[str] = (), *, limits: Optional[Limits] = None,
        call: Optional[Call] = None, before_compute=None) -> Tuple[str, Dict[str, np.ndarray]]:
  """Validates and runs; returns (signature name used, {output alias: array}).

  `before_compute()` runs after every check passed and before the graph: the
  place to wait for a compute slot, so a refused request never waits for one.
  """
  name, signature = signature_def(servable, signature_name)
  _check_inputs_match(signature, inputs)
  for index, alias in enumerate(sorted(inputs)):
    array, dtype = inputs[alias]
    _check_tensor(index, alias, signature.inputs[alias], array, dtype)
  wanted_outputs = list(output_filter) or sorted(signature.outputs)
  for alias in wanted_outputs:
    if alias not in signature.outputs:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                         f'output tensor alias not found in signature: {alias} '
                         f'Outputs expected to be in the set {{{",".join(sorted(signature.outputs))}}}.')
  check_work(inputs, limits or Limits())
  if before_compute is not None:
    before_compute()
  tensors = {alias: tf.constant(array, dtype=dtype) for alias, (array, dtype) in inputs.items()}
  function = servable.function(name)
  try:
    outputs = call.run(function, **tensors) if call is not None else function(**tensors)
  except tf.errors.CancelledError as e:
    if call is not None and call.cancelled:
      raise call.error() from None
    raise op_error(e) from None
  except tf.errors.OpError as e:
    raise op_error(e) from None
  return name, {alias: outputs[alias].numpy() for alias in wanted_outputs}


# ------------------------------------------------------------------ TensorProto -> array
# dtype -> (numpy dtype, the repeated field that carries its values). The field
# choice is TensorProto's (tensorflow/core/framework/tensor.proto).
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: (np.float32, 'float_val'),
    types_pb2.DT_DOUBLE: (np.float64, 'double_val'),
    types_pb2.DT_INT32: (np.int32, 'int_val'),
    types_pb2.DT_INT16: (np.int16, 'int_val'),
    types_pb2.DT_INT8: (np.int8, 'int_val'),
    types_pb2.DT_UINT8: (np.uint8, 'int_val'),
    types_pb2.DT_UINT16: (np.uint16, 'int_val'),
    types_pb2.DT_INT64: (np.int64, 'int64_val'),
    types_pb2.DT_UINT32: (np.uint32, 'uint32_val'),
    types_pb2.DT_UINT64: (np.uint64, 'uint64_val'),
    types_pb2.DT_BOOL: (np.bool_, 'bool_val'),
    types_pb2.DT_HALF: (np.float16, 'half_val'),
    types_pb2.DT_STRING: (object, 'string_val'),
}
MAX_RANK = 32


def _shape(alias: str, proto, limits: Limits) -> Tuple[Tuple[int, ...], int]:
  """The declared shape and its element count, refused when negative or over the limit."""
  if proto.tensor_shape.unknown_rank:
    raise invalid(f'tensor parsing error: {alias}: a request tensor must have a known shape')
  dims = [d.size for d in proto.tensor_shape.dim]
  if len(dims) > MAX_RANK:
    raise invalid(f'tensor parsing error: {alias}: rank {len(dims)} is over {MAX_RANK}')
  count, nonzero = 1, 1   # nonzero: [0, 2^40] holds no value but is no shape to accept
  for d in dims:
    if d < 0:
      raise invalid(f'tensor parsing error: {alias}: dimension {d} is negative')
    count *= d
    nonzero *= max(d, 1)
    if nonzero > limits.max_tensor_elements:
      raise invalid(f'tensor parsing error: {alias}: declared shape '
                    f'[{",".join(map(str, dims))}] has more than {limits.max_tensor_elements} '
                    'elements (--max_tensor_elements)')
  return tuple(dims), count


def tensor_proto_to_input(alias: str, proto, limits: Optional[Limits] = None
                          ) -> Tuple[np.ndarray, tf.DType]:
  """TensorProto -> (array, dtype), sized only from the values it carries.

  Never calls tf.make_ndarray: that sizes the array from the declared shape
  (one value with shape [2^40] asks for 4 TiB). Raises RequestError
  (INVALID_ARGUMENT) for anything malformed or over a limit.
  """
  limits = limits or Limits()
  if proto.dtype not in _VALUE_FIELDS:
    name = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() \
        else str(proto.dtype)
    raise invalid(f'tensor parsing error: {alias}: dtype {name} is not supported')
  np_dtype, field = _VALUE_FIELDS[proto.dtype]
  dtype = tf.dtypes.as_dtype(proto.dtype)
  shape, count = _shape(alias, proto, limits)
  if proto.tensor_content:
    if proto.dtype == types_pb2.DT_STRING:
      raise invalid(f'tensor parsing error: {alias}: string tensors carry string_val, '
                    'not tensor_content')
    itemsize = np.dtype(np_dtype).itemsize
    if len(proto.tensor_content) != count * itemsize:
      raise invalid(f'tensor parsing error: {alias}: declared shape [{",".join(map(str, shape))}] '
                    f'needs {count * itemsize} bytes of tensor_content but {len(proto.tensor_content)} '
                    'were sent')
    array = np.frombuffer(proto.tensor_content, dtype=np.dtype(np_dtype).newbyteorder('<'))
    return array.astype(np_dtype).reshape(shape), dtype
  values = getattr(proto, field)
  if len(values) != count:
    raise invalid(f'tensor parsing error: {alias}: declared shape [{",".join(map(str, shape))}] '
                  f'holds {count} values but {len(values)} were sent')
  if proto.dtype == types_pb2.DT_STRING:
    for v in values:
      if len(v) > limits.max_string_bytes:
        raise invalid(f'input "{alias}" has a string of {len(v)} bytes; the limit is '
                      f'{limits.max_string_bytes} (--max_string_bytes)')
    array = np.empty(count, dtype=object)
    array[:] = list(values)
    return array.reshape(shape), dtype
  if proto.dtype == types_pb2.DT_HALF:   # half_val carries the 16 bits in an int32
    bits = np.array(values, dtype=np.int64)
    if bits.size and (bits.min() < 0 or bits.max() > 0xFFFF):
      raise invalid(f'tensor parsing error: {alias}: a half_val is not a 16-bit pattern')
    return bits.astype(np.uint16).view(np.float16).reshape(shape), dtype
  if np.issubdtype(np_dtype, np.integer):
    info = np.iinfo(np_dtype)
    wide = np.array(values, dtype=np.uint64 if np_dtype == np.uint64 else np.int64)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
      raise invalid(f'tensor parsing error: {alias}: a value is out of range for '
                    f'{dtype_text(dtype)}')
    return wide.astype(np_dtype).reshape(shape), dtype
  return np.array(values, dtype=np_dtype).reshape(shape), dtype


def array_to_tensor_proto(array: np.ndarray, dtype: Optional[tf.DType] = None):
  """Our own outputs -> TensorProto (safe: the array exists, nothing is declared)."""
  return tf.make_tensor_proto(array, dtype=dtype)
