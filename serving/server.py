"""A TF-Serving-compatible model server: `python -m serving.server --port=8500 ...`.

Why it exists: the real `tensorflow_model_server` binary and Docker are not
available where this project is developed and tested, yet applications talk to
TF Serving. This server speaks the same protocol over the same pushed model
directory, so a client written against one works unchanged against the other
(serving/README.md lists what differs). Flags are named like the binary's:

  --port (8500)  --rest_api_port (8501, 0 = off)  --model_name  --model_base_path
  --model_config_file (text ModelServerConfig; several models, version policies,
  labels)  --model_config_file_poll_wait_seconds  --ssl_config_file (text SSLConfig)
  --file_system_poll_wait_seconds (1; 0 = look once at start)  --grpc_max_threads

Services: tensorflow.serving.PredictionService (Predict, GetModelMetadata;
Classify/Regress/MultiInference answer UNIMPLEMENTED) and
tensorflow.serving.ModelService (GetModelStatus, HandleReloadConfigRequest), plus
the REST API (serving/rest.py). Lifecycle, codes and messages: serving/models.py
and serving/predict.py. Requests run on a thread pool; TensorFlow releases the
GIL while computing, so requests overlap and none waits on another's compute.
"""

import argparse
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from typing import Optional

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')   # before TensorFlow is imported
  import warnings
  warnings.filterwarnings('ignore', category=FutureWarning)   # google.api_core's Python-version notice

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving import predict, protos
from serving.models import ModelManager, ServingError, single_model_config
from serving.rest import RestServer

log = logging.getLogger('serving')

# TF Serving accepts messages up to 2 GiB - 1 in both directions.
MAX_MESSAGE_BYTES = 2**31 - 1


def _abort(context: grpc.ServicerContext, e: ServingError):
  context.abort(e.code, e.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, manager: ModelManager):
    self._manager = manager

  def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
    try:
      if not request.HasField('model_spec'):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec')
      servable = self._manager.servable(request.model_spec)
      inputs = {alias: predict.tensor_proto_to_input(alias, proto)
                for alias, proto in request.inputs.items()}
      name, outputs = predict.run(servable, request.model_spec.signature_name, inputs,
                                  request.output_filter)
      response = predict_pb2.PredictResponse()
      response.model_spec.name = servable.name
      response.model_spec.version.value = servable.version
      response.model_spec.signature_name = name
      for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(predict.array_to_tensor_proto(array))
      return response
    except ServingError as e:
      _abort(context, e)
    except Exception as e:  # never let one request take the server down
      log.exception('Predict failed')
      context.abort(grpc.StatusCode.INTERNAL, f'Internal error: {e}')

  def GetModelMetadata(self, request, context):  # noqa: N802
    try:
      if not request.HasField('model_spec'):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec')
      if not request.metadata_field:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           'GetModelMetadataRequest must specify at least one metadata_field')
      for field in request.metadata_field:
        if field != 'signature_def':
          raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                             f'Metadata field {field} is not supported')
      servable = self._manager.servable(request.model_spec)
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = servable.name
      response.model_spec.version.value = servable.version
      signatures = get_model_metadata_pb2.SignatureDefMap()
      for key, value in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(value)
      response.metadata['signature_def'].Pack(signatures)
      return response
    except ServingError as e:
      _abort(context, e)

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

  def __init__(self, manager: ModelManager):
    self._manager = manager

  def GetModelStatus(self, request, context):  # noqa: N802
    try:
      if not request.HasField('model_spec'):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec')
      return get_model_status_pb2.GetModelStatusResponse(
          model_version_status=self._manager.status(request.model_spec))
    except ServingError as e:
      _abort(context, e)

  def HandleReloadConfigRequest(self, request, context):  # noqa: N802
    """Replaces the model list, then loads/unloads before answering (as TF Serving)."""
    response = model_management_pb2.ReloadConfigResponse()
    try:
      self._manager.set_config(request.config)
      self._manager.poll()
    except ServingError as e:
      response.status.error_code = e.code.value[0]
      response.status.error_message = e.message
      _abort(context, e)
    return response


class ModelServer:
  """The servers and the pollers, startable in-process (tests) or from `main`."""

  def __init__(self, config: model_server_config_pb2.ModelServerConfig, *,
               grpc_port: int = 8500, rest_port: Optional[int] = 8501,
               host: str = '0.0.0.0', poll_seconds: float = 1.0,
               ssl_config=None, max_threads: int = 32,
               config_file: Optional[str] = None, config_poll_seconds: float = 0.0):
    self.manager = ModelManager(config)
    self._poll_seconds = poll_seconds
    self._config_file = config_file
    self._config_poll_seconds = config_poll_seconds
    self._stop = threading.Event()
    self._threads = []

    self._grpc = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_threads,
                                              thread_name_prefix='grpc'),
        options=[('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
                 ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(self.manager), self._grpc)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(self.manager), self._grpc)
    address = f'{host}:{grpc_port}'
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
    self._rest = RestServer(self.manager, host, rest_port) if rest_port is not None else None
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
      description='TF-Serving-compatible server for pushed SavedModels (gRPC + REST).')
  p.add_argument('--port', type=int, default=8500, help='gRPC port (0 = any free port)')
  p.add_argument('--rest_api_port', type=int, default=8501, help='REST port; 0 disables REST')
  p.add_argument('--host', default='0.0.0.0',
                 help='address to bind (not a tensorflow_model_server flag; it binds 0.0.0.0)')
  p.add_argument('--model_name', default='default')
  p.add_argument('--model_base_path', default='',
                 help='directory holding <version>/saved_model.pb')
  p.add_argument('--model_config_file', default='', help='text-format ModelServerConfig')
  p.add_argument('--model_config_file_poll_wait_seconds', type=float, default=0,
                 help='re-read --model_config_file this often (0 = never)')
  p.add_argument('--ssl_config_file', default='', help='text-format SSLConfig (gRPC TLS)')
  p.add_argument('--file_system_poll_wait_seconds', type=float, default=1,
                 help='look for new versions this often (0 = only at start)')
  p.add_argument('--grpc_max_threads', type=int, default=32,
                 help='requests served at once over gRPC')
  return p


def main(argv=None) -> int:
  args = build_arg_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
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
    server = ModelServer(
        config, grpc_port=args.port,
        rest_port=args.rest_api_port or None, host=args.host,
        poll_seconds=args.file_system_poll_wait_seconds, ssl_config=ssl_config,
        max_threads=args.grpc_max_threads,
        config_file=args.model_config_file or None,
        config_poll_seconds=args.model_config_file_poll_wait_seconds)
  except (ServingError, OSError, ValueError) as e:   # text_format.ParseError is a ValueError
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
