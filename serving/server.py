"""A TF-Serving-compatible model server: `python -m serving.server --port=8500 ...`.

Why it exists: the real `tensorflow_model_server` binary and Docker are not
available where this project is developed and tested, yet applications talk to
TF Serving. This server speaks the same protocol over the same pushed model
directory, so a client written against one works unchanged against the other
(serving/README.md lists what differs). Flags are named like the binary's:

  --port (8500)  --rest_api_port (8501, 0 = off)  --model_name  --model_base_path
  --model_config_file (text ModelServerConfig; several models, version policies,
  labels)  --model_config_file_poll_wait_seconds  --ssl_config_file (text SSLConfig)
  --file_system_poll_wait_seconds (1; 0 = look once at start)
  --max_num_load_retries (5)  --load_retry_interval_micros (60 s)

and ours, for a server that faces clients it does not trust (serving/README.md
has the table): --host (127.0.0.1), the limits of serving/limits.py
(--max_request_bytes, --max_batch_rows, ...), --enable_reload_config with
--reload_config_allowed_roots, --allow_plaintext_rest_with_tls, the REST
timeouts.

Services: tensorflow.serving.PredictionService (Predict, GetModelMetadata;
Classify/Regress/MultiInference answer UNIMPLEMENTED) and
tensorflow.serving.ModelService (GetModelStatus, HandleReloadConfigRequest), plus
the REST API (serving/rest.py). Both call the one request layer,
serving/service.py. gRPC threads: N computing + Q waiting predicts (admission)
plus a reserve for status/metadata, and `maximum_concurrent_rpcs` so gRPC's own
queue is bounded too.
"""

import argparse
import concurrent.futures
import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Optional, Sequence

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')   # before TensorFlow is imported
  import warnings
  warnings.filterwarnings('ignore', category=FutureWarning)   # google.api_core's Python-version notice

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving import protos
from serving.limits import DESCRIPTIONS as LIMIT_DESCRIPTIONS
from serving.limits import Call, Limits
from serving.models import (DEFAULT_LOAD_RETRY_INTERVAL_MICROS, DEFAULT_MAX_NUM_LOAD_RETRIES,
                            ModelManager, RequestError, single_model_config)
from serving.rest import RestOptions, RestServer
from serving.service import Service, internal_error

log = logging.getLogger('serving')

# Loopback unless the operator says otherwise (--host=0.0.0.0 in containers).
DEFAULT_HOST = '127.0.0.1'

# glibc gives each thread that meets a locked arena a new one, up to 8 per core,
# and never returns an arena's free pages that lie below a live allocation. With
# gRPC, tornado and TF's pools each touching memory from different threads, the
# bench.soak RSS grew by 24 MiB/min over 10 minutes without ever flattening
# (bench/results/soak.json); capped at 2 arenas it levels off. A little lock
# contention in malloc is nothing beside a generate step.
DEFAULT_MALLOC_ARENA_MAX = 2
_M_ARENA_MAX = -8   # malloc.h


def limit_malloc_arenas(arenas: int) -> bool:
  """mallopt(M_ARENA_MAX, arenas); True when glibc took it.

  Must run before the server starts its threads: glibc fixes the limit the
  first time it needs a ninth arena. MALLOC_ARENA_MAX in the environment does
  the same from process start (the Dockerfile sets it too).
  """
  if arenas <= 0:
    return False
  try:
    import ctypes   # pylint: disable=g-import-not-at-top
    return bool(ctypes.CDLL('libc.so.6').mallopt(_M_ARENA_MAX, arenas))
  except (OSError, AttributeError):   # not glibc (musl, macOS): nothing to cap
    return False
# gRPC threads kept for status/metadata/unimplemented calls beyond the predict slots.
HEALTH_THREADS = 8
# TF Serving sends messages up to 2 GiB - 1; responses are bounded by the limits.
MAX_SEND_BYTES = 2**31 - 1


def _grpc_call(context: grpc.ServicerContext) -> Call:
  remaining = context.time_remaining()
  return Call.from_timeout(remaining if remaining is not None and remaining < 1e9 else None,
                           context.is_active)


def _answer(context: grpc.ServicerContext, what: str, handler, *args):
  """Runs one handler; RequestError -> its code, anything else -> INTERNAL + request id."""
  call = args[-1] if args and isinstance(args[-1], Call) else Call()
  try:
    return handler(*args)
  except RequestError as e:
    context.abort(e.code, e.message)
  except Exception:  # never let one request take the server down, nor show its insides
    log.exception('%s failed (request id %s)', what, call.request_id)
    context.abort(grpc.StatusCode.INTERNAL, internal_error(call).message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, service: Service):
    self._service = service

  def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
    return _answer(context, 'Predict', self._service.predict_response, request,
                   _grpc_call(context))

  def GetModelMetadata(self, request, context):  # noqa: N802
    return _answer(context, 'GetModelMetadata', self._service.get_model_metadata, request)

  def _unimplemented(self, method, context):
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  f'{method} is not supported by this server: char_rnn models export no '
                  'classification/regression signatures; use Predict')

  def Classify(self, request, context):  # noqa: N802
    self._unimplemented('Classify', context)

  def Regress(self, request, context):  # noqa: N802
    self._unimplemented('Regress', context)

  def MultiInference(self, request, context):  # noqa: N802
    self._unimplemented('MultiInference', context)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):

  def __init__(self, service: Service):
    self._service = service

  def GetModelStatus(self, request, context):  # noqa: N802
    return _answer(context, 'GetModelStatus', self._service.get_model_status, request)

  def HandleReloadConfigRequest(self, request, context):  # noqa: N802
    return _answer(context, 'HandleReloadConfigRequest', self._service.reload_config, request)


class ModelServer:
  """The servers and the pollers, startable in-process (tests) or from `main`."""

  def __init__(self, config: model_server_config_pb2.ModelServerConfig, *,
               grpc_port: int = 8500, rest_port: Optional[int] = 8501,
               host: str = DEFAULT_HOST, poll_seconds: float = 1.0,
               ssl_config=None, limits: Optional[Limits] = None,
               config_file: Optional[str] = None, config_poll_seconds: float = 0.0,
               reload_roots: Optional[Sequence[str]] = None,
               allow_plaintext_rest_with_tls: bool = False,
               rest_options: Optional[RestOptions] = None,
               max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
               load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS):
    self.manager = ModelManager(config, max_num_load_retries=max_num_load_retries,
                                load_retry_interval_micros=load_retry_interval_micros)
    self.limits = limits or Limits()
    self.service = Service(self.manager, self.limits, reload_roots=reload_roots)
    self._poll_seconds = poll_seconds
    self._config_file = config_file
    self._config_poll_seconds = config_poll_seconds
    self._stop = threading.Event()
    self._threads = []

    # Predict holds at most N+Q threads (admission refuses the rest at once);
    # HEALTH_THREADS more keep status/metadata answering; maximum_concurrent_rpcs
    # refuses RPCs beyond all of them with RESOURCE_EXHAUSTED instead of queueing.
    threads = self.service.admission.capacity + HEALTH_THREADS
    self._grpc = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix='grpc'),
        options=[('grpc.max_send_message_length', MAX_SEND_BYTES),
                 ('grpc.max_receive_message_length', self.limits.max_request_bytes)],
        maximum_concurrent_rpcs=threads)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(self.service), self._grpc)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(self.service), self._grpc)
    address = f'[{host}]:{grpc_port}' if ':' in host else f'{host}:{grpc_port}'
    if ssl_config is not None:
      credentials = grpc.ssl_server_credentials(
          [(ssl_config.server_key.encode(), ssl_config.server_cert.encode())],
          root_certificates=ssl_config.custom_ca.encode() or None,
          require_client_auth=ssl_config.client_verify)
      self.grpc_port = self._grpc.add_secure_port(address, credentials)
    else:
      self.grpc_port = self._grpc.add_insecure_port(address)
    if not self.grpc_port:
      raise OSError(f'could not bind gRPC to {address}')
    self._rest = None
    if rest_port is not None:
      rest_ssl = ssl_config
      if ssl_config is not None and allow_plaintext_rest_with_tls:
        log.warning('REST serves plaintext while gRPC requires TLS '
                    '(--allow_plaintext_rest_with_tls): REST bypasses the TLS settings')
        rest_ssl = None
      self._rest = RestServer(self.service, host, rest_port, ssl_config=rest_ssl,
                              options=rest_options)
    self.rest_port = self._rest.port if self._rest else None

  def start(self) -> 'ModelServer':
    self.manager.poll()   # like TF Serving: initial versions load before serving
    self._grpc.start()
    if self._rest:
      self._rest.start()
    if self._poll_seconds > 0:
      self._spawn(self._poll_loop, 'fs-poll')
    if self._config_file and self._config_poll_seconds > 0:
      self._spawn(self._config_loop, 'config-poll')
    return self

  def _spawn(self, target, name):
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    self._threads.append(thread)

  def _poll_loop(self):
    while not self._stop.wait(self._poll_seconds):
      self.manager.poll()

  def _config_loop(self):
    last = None
    while not self._stop.wait(self._config_poll_seconds):
      try:
        text = open(self._config_file, encoding='utf-8').read()
        if text != last:
          self.manager.set_config(protos.parse_text(self._config_file, protos.ModelServerConfig))
          self.manager.poll()
          last = text
      except Exception as e:  # a bad edit keeps the previous config serving
        log.error('Reloading %s failed, keeping the previous config: %s', self._config_file, e)

  def stop(self, grace: float = 1.0) -> None:
    self._stop.set()
    if self._rest:
      self._rest.stop()
    self._grpc.stop(grace).wait()
    for thread in self._threads:
      thread.join(timeout=5)


def build_arg_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m serving.server',
      description='TF-Serving-compatible server for pushed SavedModels (gRPC + REST).',
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--port', type=int, default=8500, help='gRPC port (0 = any free port)')
  p.add_argument('--rest_api_port', type=int, default=8501, help='REST port; 0 disables REST')
  p.add_argument('--malloc_arena_max', type=int, default=DEFAULT_MALLOC_ARENA_MAX,
                 help='glibc malloc arenas (0: glibc\'s default of 8 per core); see '
                      'limit_malloc_arenas')
  p.add_argument('--host', default=DEFAULT_HOST,
                 help='address both ports bind; 0.0.0.0 (or ::) to serve other machines '
                      '(not a tensorflow_model_server flag: the binary binds 0.0.0.0)')
  p.add_argument('--model_name', default='default', help='name of the model given by --model_base_path')
  p.add_argument('--model_base_path', default='',
                 help='directory holding <version>/saved_model.pb')
  p.add_argument('--model_config_file', default='', help='text-format ModelServerConfig')
  p.add_argument('--model_config_file_poll_wait_seconds', type=float, default=0,
                 help='re-read --model_config_file this often (0 = never)')
  p.add_argument('--ssl_config_file', default='',
                 help='text-format SSLConfig: gRPC and REST both serve TLS with it')
  p.add_argument('--allow_plaintext_rest_with_tls', action='store_true',
                 help='with --ssl_config_file, serve REST without TLS (TF Serving does; it '
                      'lets a client skip the TLS/client-certificate check)')
  p.add_argument('--file_system_poll_wait_seconds', type=float, default=1,
                 help='look for new versions this often (0 = only at start)')
  p.add_argument('--max_num_load_retries', type=int, default=DEFAULT_MAX_NUM_LOAD_RETRIES,
                 help="retries of a version that failed to load (TF Serving's default)")
  p.add_argument('--load_retry_interval_micros', type=int,
                 default=DEFAULT_LOAD_RETRY_INTERVAL_MICROS,
                 help='wait before the first retry; doubled after each failure')
  p.add_argument('--enable_reload_config', action='store_true',
                 help='accept ModelService/HandleReloadConfigRequest (off: PERMISSION_DENIED)')
  p.add_argument('--reload_config_allowed_roots', default='',
                 help='comma-separated directories a reloaded base_path must lie under '
                      "(default: the parent directories of the startup models' base paths)")
  defaults = Limits()
  for field in dataclasses.fields(Limits):
    p.add_argument(f'--{field.name}', type=int, default=getattr(defaults, field.name),
                   help=LIMIT_DESCRIPTIONS[field.name])
  rest_defaults = RestOptions()
  p.add_argument('--rest_body_timeout_seconds', type=float, default=rest_defaults.body_timeout,
                 help='REST: a request body must arrive within this time')
  p.add_argument('--rest_idle_timeout_seconds', type=float, default=rest_defaults.idle_timeout,
                 help='REST: close a connection idle (or half-open) this long')
  p.add_argument('--rest_request_timeout_seconds', type=float,
                 default=rest_defaults.request_timeout,
                 help='REST: deadline of one :predict (REST has no client deadline; '
                      'past it the run is cancelled)')
  p.add_argument('--grpc_max_threads', type=int, default=None,
                 help='ignored (kept so old command lines run): gRPC threads are '
                      'max_concurrent_predicts + max_queued_predicts + '
                      f'{HEALTH_THREADS}')
  return p


def main(argv=None) -> int:
  args = build_arg_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  if limit_malloc_arenas(args.malloc_arena_max):
    log.info('malloc arenas capped at %d', args.malloc_arena_max)
  try:
    if args.model_config_file:
      config = protos.parse_text(args.model_config_file, protos.ModelServerConfig)
    elif args.model_base_path:
      config = single_model_config(args.model_name, args.model_base_path)
    else:
      print('error: give --model_base_path (with --model_name) or --model_config_file',
            file=sys.stderr)
      return 2
    ssl_config = (protos.parse_text(args.ssl_config_file, protos.SSLConfig)
                  if args.ssl_config_file else None)
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
    reload_roots = None
    if args.enable_reload_config:
      reload_roots = ([r for r in args.reload_config_allowed_roots.split(',') if r] or
                      sorted({os.path.dirname(os.path.abspath(m.base_path))
                              for m in config.model_config_list.config}))
      log.info('HandleReloadConfigRequest enabled for base paths under %s', reload_roots)
    server = ModelServer(
        config, grpc_port=args.port,
        rest_port=args.rest_api_port or None, host=args.host,
        poll_seconds=args.file_system_poll_wait_seconds, ssl_config=ssl_config,
        limits=limits, config_file=args.model_config_file or None,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
        reload_roots=reload_roots,
        allow_plaintext_rest_with_tls=args.allow_plaintext_rest_with_tls,
        rest_options=RestOptions(body_timeout=args.rest_body_timeout_seconds,
                                 idle_timeout=args.rest_idle_timeout_seconds,
                                 request_timeout=args.rest_request_timeout_seconds),
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros)
  except (RequestError, OSError, ValueError) as e:   # text_format.ParseError is a ValueError
    print(f'error: {e}', file=sys.stderr)
    return 2
  server.start()
  log.info('Running gRPC ModelServer at %s:%d ...', args.host, server.grpc_port)
  if server.rest_port:
    log.info('Exporting HTTP/REST API at:%s:%d ...', args.host, server.rest_port)
  done = threading.Event()
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: done.set())
  done.wait()
  log.info('Shutting down')
  server.stop()
  return 0


if __name__ == '__main__':
  sys.exit(main())
