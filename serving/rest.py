"""TF Serving's REST API (port 8501) over the same ModelManager as the gRPC API.

Paths and JSON shapes follow tensorflow_serving/model_servers/http_rest_api_handler
and util/json_tensor: a curl command written for the real server works here.

  GET  /v1/models/<name>[/versions/<n>|/labels/<l>]            -> GetModelStatus JSON
  GET  /v1/models/<name>[/versions/<n>|/labels/<l>]/metadata   -> {model_spec, metadata}
  POST /v1/models/<name>[/versions/<n>|/labels/<l>]:predict
       {"signature_name": s, "instances": [...]}  (row format)    -> {"predictions": [...]}
       {"signature_name": s, "inputs": {...}}     (columnar)      -> {"outputs": ...}
  POST ...:classify / ...:regress -> 501, this server has no classify/regress signatures.

Strings travel as JSON strings, or {"b64": ...}; string outputs whose alias ends
in `_bytes` come back base64-encoded, as TF Serving does. Errors are
`{"error": "<message>"}` with TF Serving's HTTP codes (400 for INVALID_ARGUMENT and
FAILED_PRECONDITION, 404 NOT_FOUND, 501 UNIMPLEMENTED, 500 otherwise).
"""

import base64
import http.server
import json
import logging
import re
import threading
import urllib.parse
from typing import Any, Dict, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving import predict
from serving.models import ModelManager, ServingError

log = logging.getLogger('serving')

_PREDICT_PATH = re.compile(
    r'(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?'
    r':(classify|regress|predict)')
_STATUS_PATH = re.compile(
    r'(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?')

HTTP_CODE = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


def _bad(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------- JSON <-> arrays
def _decode_strings(value: Any, alias: str) -> Any:
  if isinstance(value, list):
    return [_decode_strings(v, alias) for v in value]
  if isinstance(value, dict):
    if set(value) == {'b64'} and isinstance(value['b64'], str):
      try:
        return base64.b64decode(value['b64'], validate=True)
      except ValueError:
        raise _bad(f'Unable to base64 decode "b64" value of input "{alias}"') from None
    raise _bad(f'Expecting a string or {{"b64": ...}} object for input "{alias}"')
  if isinstance(value, str):
    return value.encode('utf-8')
  raise _bad(f'Expecting a string value for input "{alias}" but got {json.dumps(value)[:40]}')


def json_to_input(alias: str, value: Any, info) -> Tuple[np.ndarray, tf.DType]:
  """A JSON value -> (array, dtype) using the signature's dtype, as json_tensor does."""
  dtype = tf.dtypes.as_dtype(info.dtype)
  try:
    if dtype == tf.string:
      decoded = _decode_strings(value, alias)
      array = np.array(decoded, dtype=object)
      if array.dtype != object or any(not isinstance(x, bytes) for x in array.ravel()):
        raise _bad(f'Input "{alias}" is ragged or not a list of strings')
    elif dtype == tf.bool:
      array = np.array(value, dtype=bool)
    else:
      if any(isinstance(x, (str, dict)) for x in np.ravel(np.array(value, dtype=object))):
        raise _bad(f'Expecting numeric values for input "{alias}" ({dtype.name})')
      array = np.array(value, dtype=dtype.as_numpy_dtype)
  except ServingError:
    raise
  except (ValueError, TypeError, OverflowError) as e:
    raise _bad(f'Failed to convert input "{alias}" to {dtype.name}: {e}') from None
  return array, dtype


def _value_to_json(alias: str, value: Any) -> Any:
  if isinstance(value, np.ndarray):
    return [_value_to_json(alias, v) for v in value] if value.ndim else _value_to_json(alias, value.item())
  if isinstance(value, bytes):
    if alias.endswith('_bytes'):
      return {'b64': base64.b64encode(value).decode('ascii')}
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.generic):
    return value.item()
  return value


def _parse_json(body: bytes) -> Dict[str, Any]:
  try:
    request = json.loads(body.decode('utf-8') if body else '')
  except (ValueError, UnicodeDecodeError) as e:
    raise _bad(f'JSON Parse error: {e}') from None
  if not isinstance(request, dict):
    raise _bad('JSON Value: ' + json.dumps(request)[:80] + ' Is not object')
  return request


def _signature_name(request: Dict[str, Any]) -> str:
  name = request.get('signature_name', '')
  if not isinstance(name, str):
    raise _bad("'signature_name' key must be a string value.")
  return name


def _inputs_from_json(request: Dict[str, Any], input_infos) -> Tuple[Dict[str, Tuple[np.ndarray, tf.DType]], str]:
  has_instances, has_inputs = 'instances' in request, 'inputs' in request
  if has_instances == has_inputs:
    raise _bad("Missing 'inputs' or 'instances' key" if not has_instances else
               "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists")
  names = sorted(input_infos)
  if has_inputs:
    value = request['inputs']
    if isinstance(value, dict) and not (len(names) == 1 and set(value) == {'b64'}):
      named = value
    elif len(names) == 1:
      named = {names[0]: value}
    else:
      raise _bad(f"'inputs' must be an object keyed by the signature's inputs {{{','.join(names)}}}")
    return {k: json_to_input(k, v, input_infos[k]) if k in input_infos else
            (np.asarray(v, dtype=object), tf.string) for k, v in named.items()}, 'columnar'

  instances = request['instances']
  if not isinstance(instances, list) or not instances:
    raise _bad("'instances' must be a non-empty list")
  rows: Dict[str, list] = {}
  for i, item in enumerate(instances):
    if isinstance(item, dict) and not (len(names) == 1 and set(item) == {'b64'}):
      if i and set(item) != set(rows):
        raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object: "
                   f'keys {sorted(item)} differ from the first element\'s {sorted(rows)}')
      for k, v in item.items():
        rows.setdefault(k, []).append(v)
    elif len(names) == 1:
      rows.setdefault(names[0], []).append(item)
    else:
      raise _bad(f"Expecting object but got {type(item).__name__} at item {i} of 'instances' "
                 f"list: signature has several inputs {{{','.join(names)}}}")
  return {k: json_to_input(k, v, input_infos[k]) if k in input_infos else
          (np.asarray(v, dtype=object), tf.string) for k, v in rows.items()}, 'row'


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
      raise _bad(f'Tensor name: {alias} has inconsistent batch size: '
                 f'{size if size is not None else "<scalar>"} expecting: {batch}')
    batch = size
  if len(outputs) == 1:
    (alias, value), = outputs.items()
    return {'predictions': [_value_to_json(alias, row) for row in value]}
  return {'predictions': [{k: _value_to_json(k, v[i]) for k, v in outputs.items()}
                          for i in range(batch)]}


# ---------------------------------------------------------------- handlers
def _model_spec(name: str, version: str, label: str) -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
  if version:
    spec.version.value = int(version)
  if label:
    spec.version_label = urllib.parse.unquote(label)
  return spec


def handle(manager: ModelManager, method: str, path: str, body: bytes) -> Tuple[int, Dict[str, Any]]:
  """One REST request -> (HTTP status, JSON object). Never raises."""
  try:
    return 200, _dispatch(manager, method, path, body)
  except ServingError as e:
    return HTTP_CODE.get(e.code, 500), {'error': e.message}
  except Exception as e:  # a bug must answer 500, not kill the connection
    log.exception('REST request %s %s failed', method, path)
    return 500, {'error': f'Internal error: {e}'}


def _dispatch(manager: ModelManager, method: str, path: str, body: bytes) -> Dict[str, Any]:
  if method == 'POST':
    m = _PREDICT_PATH.fullmatch(path)
    if m:
      spec = _model_spec(*m.group(1, 2, 3))
      if m.group(4).lower() != 'predict':
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f'{m.group(4).lower()} is not supported by this server: char_rnn '
                           'models have no classification/regression signatures; use :predict')
      return _predict(manager, spec, body)
  elif method == 'GET':
    m = _STATUS_PATH.fullmatch(path)
    if m:
      if not m.group(1):
        raise _bad('Missing model name in request.')
      spec = _model_spec(*m.group(1, 2, 3))
      if m.group(4):
        return _metadata(manager, spec)
      response = get_model_status_pb2.GetModelStatusResponse(
          model_version_status=manager.status(spec))
      return json.loads(json_format.MessageToJson(response, including_default_value_fields=True))
  raise _bad(f'Malformed request: {method} {path}')


def _predict(manager: ModelManager, spec, body: bytes) -> Dict[str, Any]:
  request = _parse_json(body)
  servable = manager.servable(spec)
  name = _signature_name(request) or predict.DEFAULT_SIGNATURE
  if name not in servable.signature_defs:
    raise _bad(f'Serving signature name: "{name}" not found in signature def')
  inputs, fmt = _inputs_from_json(request, servable.signature_defs[name].inputs)
  _, outputs = predict.run(servable, name, inputs)
  return outputs_to_json(outputs, fmt)


def _metadata(manager: ModelManager, spec) -> Dict[str, Any]:
  servable = manager.servable(spec)
  used = model_pb2.ModelSpec(name=servable.name)
  used.version.value = servable.version
  signatures = get_model_metadata_pb2.SignatureDefMap()
  for k, v in servable.signature_defs.items():
    signatures.signature_def[k].CopyFrom(v)

  def as_dict(message):
    return json.loads(json_format.MessageToJson(
        message, including_default_value_fields=True, preserving_proto_field_name=True))
  return {'model_spec': as_dict(used), 'metadata': {'signature_def': as_dict(signatures)}}


# ---------------------------------------------------------------- HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
  manager: ModelManager = None   # set per server class
  protocol_version = 'HTTP/1.1'

  def _serve(self, method: str) -> None:
    length = int(self.headers.get('Content-Length') or 0)
    body = self.rfile.read(length) if length else b''
    path = urllib.parse.urlsplit(self.path).path
    if not re.fullmatch(r'(?i)/v1/.*', path):
      status, payload = 404, {'error': f'Not found: {path}'}
    else:
      status, payload = handle(self.manager, method, path, body)
    data = json.dumps(payload, indent=1).encode('utf-8')
    self.send_response(status)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # noqa: N802 (http.server's naming)
    self._serve('GET')

  def do_POST(self):  # noqa: N802
    self._serve('POST')

  def log_message(self, fmt, *args):
    log.debug('REST %s - %s', self.address_string(), fmt % args)


class RestServer:
  """A threaded HTTP server (one thread per connection) answering /v1/ paths."""

  def __init__(self, manager: ModelManager, host: str, port: int):
    handler = type('Handler', (_Handler,), {'manager': manager})
    self._httpd = http.server.ThreadingHTTPServer((host, port), handler)
    self._httpd.daemon_threads = True
    self.port = self._httpd.server_address[1]
    self._thread = threading.Thread(target=self._httpd.serve_forever, name='rest', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()
