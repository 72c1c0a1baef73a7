"""TF Serving's REST API (port 8501) on tornado, over the same request layer as gRPC.

Paths and JSON shapes follow tensorflow_serving/model_servers/http_rest_api_handler
and util/json_tensor: a curl command written for the real server works here.

  GET  /v1/models/<name>[/versions/<n>|/labels/<l>]            -> GetModelStatus JSON
  GET  /v1/models/<name>[/versions/<n>|/labels/<l>]/metadata   -> {model_spec, metadata}
  POST /v1/models/<name>[/versions/<n>|/labels/<l>]:predict    -> see serving/json_codec.py
  POST ...:classify / ...:regress -> 501, this server has no classify/regress signatures.
  other methods -> 405, other paths -> 404; errors are `{"error": "<message>"}` with
  TF Serving's HTTP codes (400 INVALID_ARGUMENT / FAILED_PRECONDITION, 404, 501,
  500) plus 413 (body over --max_request_bytes), 429 (RESOURCE_EXHAUSTED: busy),
  503 (UNAVAILABLE); every answer carries an X-Request-Id header.

A `:predict` body becomes the PredictRequest proto that gRPC carries
(json_codec) and goes through serving/service.py, so REST and gRPC share every
limit, code and message. Why tornado instead of http.server (one thread per
connection, no body limit, no timeouts): one event-loop thread holds every
connection (400 half-open ones cost 400 sockets, not 400 threads), and it gives
max_body_size / max_buffer_size, body_timeout, idle_connection_timeout,
keep-alive and ssl_options, maintained upstream. The body is streamed and
counted as it arrives (a lying Content-Length cannot make us allocate more
than the limit, and body_timeout drops a client that never sends it); predict
work runs on a bounded executor behind the shared admission, and status /
metadata answer on the event loop, never behind a busy predict. A client that
disconnects has its run cancelled.
"""

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import ssl
import tempfile
import threading
import urllib.parse
from typing import Any, Dict, Optional, Tuple

import grpc
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2)

from serving import json_codec
from serving.limits import Call, invalid
from serving.models import DEFAULT_SIGNATURE, RequestError
from serving.service import Service, internal_error

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


@dataclasses.dataclass(frozen=True)
class RestOptions:
  body_timeout: float = 30.0        # seconds for a request body to arrive
  idle_timeout: float = 60.0        # seconds an idle keep-alive / half-open connection lives
  request_timeout: float = 300.0    # deadline of one :predict (REST carries none)
  max_connections: int = 1024       # open connections; more are closed at once


def _model_spec(name: str, version: str, label: str) -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
  if version:
    if len(version) > 18:
      raise invalid(f'Malformed request: version {version[:20]}... is not an int64')
    spec.version.value = int(version)
  if label:
    spec.version_label = urllib.parse.unquote(label)
  return spec


def _as_dict(message) -> Dict[str, Any]:
  return json.loads(json_format.MessageToJson(
      message, including_default_value_fields=True, preserving_proto_field_name=True))


# ------------------------------------------------------------------ the two request kinds
def status_or_metadata(service: Service, path: str) -> Dict[str, Any]:
  """GET /v1/models/...: GetModelStatus or GetModelMetadata through the request layer."""
  m = _STATUS_PATH.fullmatch(path)
  if not m:
    raise invalid(f'Malformed request: GET {path[:200]}')
  if not m.group(1):
    raise invalid('Missing model name in request.')
  spec = _model_spec(*m.group(1, 2, 3))
  if m.group(4):
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=['signature_def'])
    response = service.get_model_metadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata['signature_def'].Unpack(signatures)
    return {'model_spec': _as_dict(response.model_spec),
            'metadata': {'signature_def': _as_dict(signatures)}}
  response = service.get_model_status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
  return json.loads(json_format.MessageToJson(response, including_default_value_fields=True))


def predict_path(path: str) -> model_pb2.ModelSpec:
  m = _PREDICT_PATH.fullmatch(path)
  if not m:
    raise invalid(f'Malformed request: POST {path[:200]}')
  spec = _model_spec(*m.group(1, 2, 3))
  if m.group(4).lower() != 'predict':
    raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                       f'{m.group(4).lower()} is not supported by this server: char_rnn '
                       'models have no classification/regression signatures; use :predict')
  return spec


def predict(service: Service, spec: model_pb2.ModelSpec, body: bytes, call: Call, ticket
            ) -> Dict[str, Any]:
  """A :predict body -> PredictRequest -> the request layer -> JSON (runs on the executor)."""
  with ticket:
    request_json = json_codec.decode_body(body)
    servable = service.manager.servable(spec)
    name = json_codec.signature_name(request_json) or DEFAULT_SIGNATURE
    if name not in servable.signature_defs:
      raise invalid(f'Serving signature name: "{name}" not found in signature def')
    dtypes = {k: v.dtype for k, v in servable.signature_defs[name].inputs.items()}
    request, fmt = json_codec.predict_request(request_json, spec, name, dtypes, service.limits)
    del request_json, body
    _, _, outputs = service.predict(request, call, ticket=ticket, servable=servable)
    return json_codec.outputs_to_json(outputs, fmt)


# ------------------------------------------------------------------ tornado handlers
class _JsonHandler(tornado.web.RequestHandler):
  """JSON errors (never tornado's HTML page) and a request id on every answer."""

  def initialize(self, rest: 'RestServer'):
    self.rest = rest
    self.call = Call()
    self.set_header('X-Request-Id', self.call.request_id)

  def answer(self, status: int, payload: Dict[str, Any]) -> None:
    if self._finished:
      return
    self.set_status(status)
    self.set_header('Content-Type', 'application/json')
    self.finish(json.dumps(payload, indent=1))

  def fail(self, e: RequestError) -> None:
    self.answer(HTTP_CODE.get(e.code, 500), {'error': e.message})

  def write_error(self, status_code: int, **kwargs) -> None:
    exc = kwargs.get('exc_info', (None, None, None))[1]
    if isinstance(exc, tornado.web.HTTPError) and status_code == 405:
      message = f'Method {self.request.method} is not allowed (GET or POST)'
    elif isinstance(exc, tornado.web.HTTPError):
      message = exc.log_message or self._reason
    else:
      log.error('REST %s %s failed (request id %s)', self.request.method,
                self.request.path[:200], self.call.request_id, exc_info=kwargs.get('exc_info'))
      message = internal_error(self.call).message
    self.set_header('Content-Type', 'application/json')
    self.finish(json.dumps({'error': message}))

  def log_exception(self, typ, value, tb):
    if not isinstance(value, tornado.web.HTTPError):
      super().log_exception(typ, value, tb)


class NotFoundHandler(_JsonHandler):
  SUPPORTED_METHODS = ('GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'PATCH', 'OPTIONS')

  def prepare(self):
    self.answer(404, {'error': f'Not found: {self.request.path[:200]}'})


@tornado.web.stream_request_body
class V1Handler(_JsonHandler):
  """/v1/...: the body is counted as it streams in, then GET or POST runs."""

  SUPPORTED_METHODS = ('GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'PATCH', 'OPTIONS')

  def prepare(self):
    if self.request.method not in ('GET', 'POST'):
      raise tornado.web.HTTPError(405)
    limit = self.rest.service.limits.max_request_bytes
    self._chunks, self._received, self._over = [], 0, False
    length = self.request.headers.get('Content-Length')
    if length is not None:
      if not re.fullmatch(r'[0-9]{1,18}', length.strip()):
        self.set_header('Connection', 'close')
        return self.answer(400, {'error': 'Content-Length must be a non-negative integer'})
      if int(length) > limit:
        self.set_header('Connection', 'close')
        return self.answer(413, {'error': f'Request body of {int(length)} bytes is over the '
                                          f'limit of {limit} bytes (--max_request_bytes)'})

  def data_received(self, chunk: bytes) -> None:
    # Past the limit the rest is read and dropped (tornado stops at twice the
    # limit), so that the 413 reaches a client still sending instead of a reset.
    if self._finished or self._over:
      return
    self._received += len(chunk)
    if self._received > self.rest.service.limits.max_request_bytes:
      self._over, self._chunks = True, []
      return
    self._chunks.append(chunk)

  def _refuse_oversized(self) -> bool:
    if self._over:
      self.set_header('Connection', 'close')
      self.answer(413, {'error': 'Request body is over the limit of '
                                 f'{self.rest.service.limits.max_request_bytes} bytes '
                                 '(--max_request_bytes)'})
    return self._finished

  def get(self):
    if self._refuse_oversized():
      return
    try:
      self.answer(200, status_or_metadata(self.rest.service, self.request.path))
    except RequestError as e:
      self.fail(e)

  async def post(self):
    if self._refuse_oversized():
      return
    try:
      spec = predict_path(self.request.path)
      ticket = self.rest.service.admission.admit()   # full: 429 at once, nothing queued
    except RequestError as e:
      return self.fail(e)
    body, self._chunks = b''.join(self._chunks), []
    self.call.deadline = Call.from_timeout(self.rest.options.request_timeout).deadline
    try:
      payload = await tornado.ioloop.IOLoop.current().run_in_executor(
          self.rest.executor, predict, self.rest.service, spec, body, self.call, ticket)
    except RequestError as e:
      return self.fail(e)
    except Exception:
      ticket.release()
      raise
    self.answer(200, payload)

  def on_connection_close(self):
    self.call.cancel()   # the client went away: stop its run


def _access_log(handler: tornado.web.RequestHandler) -> None:
  """Access lines at DEBUG: refused requests must not flood the log at WARNING."""
  log.debug('REST %d %s %s (%s) %.1f ms', handler.get_status(), handler.request.method,
            handler.request.path[:200], handler.request.remote_ip,
            1000 * handler.request.request_time())


class _HTTPServer(tornado.httpserver.HTTPServer):
  """tornado's HTTPServer with a cap on open connections."""

  def initialize(self, *args, max_connections: int = 1024, **kwargs):
    self.max_connections = max_connections
    super().initialize(*args, **kwargs)

  def handle_stream(self, stream, address):
    if len(self._connections) >= self.max_connections:
      stream.close()
      return
    super().handle_stream(stream, address)


def ssl_context(ssl_config) -> ssl.SSLContext:
  """The gRPC SSLConfig as a server SSLContext (same key, certificate, CA, client_verify)."""
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  with tempfile.TemporaryDirectory() as tmp:   # load_cert_chain reads files only
    cert, key = os.path.join(tmp, 'cert.pem'), os.path.join(tmp, 'key.pem')
    for path, text in ((cert, ssl_config.server_cert), (key, ssl_config.server_key)):
      with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), 'w') as f:
        f.write(text)
    context.load_cert_chain(cert, key)
  if ssl_config.custom_ca:
    context.load_verify_locations(cadata=ssl_config.custom_ca)
  if ssl_config.client_verify:
    context.verify_mode = ssl.CERT_REQUIRED
  return context


class RestServer:
  """tornado on its own event-loop thread; predict work on a bounded executor."""

  def __init__(self, service: Service, host: str, port: int, *, ssl_config=None,
               options: Optional[RestOptions] = None):
    self.service = service
    self.options = options or RestOptions()
    self.executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=service.admission.capacity, thread_name_prefix='rest')
    self._ssl = ssl_context(ssl_config) if ssl_config is not None else None
    self._sockets = tornado.netutil.bind_sockets(port, address=host)
    self.port = self._sockets[0].getsockname()[1]
    self._loop = None
    self._server = None
    self._started = threading.Event()
    self._thread = threading.Thread(target=self._run, name='rest', daemon=True)

  def _application(self) -> tornado.web.Application:
    handlers = []
    try:   # the browser playground, when its module is there
      from serving import playground
      handlers.extend(playground.routes(self.service.manager))
    except ImportError:
      log.info('serving.playground not importable: REST serves /v1/ only')
    handlers.append((r'/v1/.*', V1Handler, {'rest': self}))
    return tornado.web.Application(handlers, default_handler_class=NotFoundHandler,
                                   default_handler_args={'rest': self},
                                   log_function=_access_log)

  def _run(self) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    self._loop = tornado.ioloop.IOLoop.current()
    limit = self.service.limits.max_request_bytes
    self._server = _HTTPServer(
        self._application(), ssl_options=self._ssl, max_connections=self.options.max_connections,
        max_body_size=2 * limit, max_buffer_size=limit + 2**16,
        body_timeout=self.options.body_timeout,
        idle_connection_timeout=self.options.idle_timeout, xheaders=False)
    self._server.add_sockets(self._sockets)
    self._started.set()
    self._loop.start()

  def start(self) -> None:
    self._thread.start()
    self._started.wait(30)

  def stop(self) -> None:
    if self._loop is None:
      return

    async def shutdown():
      self._server.stop()
      try:
        await asyncio.wait_for(self._server.close_all_connections(), 2)
      except asyncio.TimeoutError:
        pass
      self._loop.stop()

    self._loop.add_callback(shutdown)
    self._thread.join(timeout=10)
    self.executor.shutdown(wait=False, cancel_futures=True)
