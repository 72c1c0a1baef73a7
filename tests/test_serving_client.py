"""The client library's retry rules and the CLI (serving/cli.py), against a real gRPC server.

The server here is a real `grpc.server` on 127.0.0.1 with a small
PredictionService/ModelService servicer written for the test: it answers each
call from a script (an error code, or a `generate`-shaped answer computed from
the request), so the cases a real model server produces only under load (its
admission queue full: RESOURCE_EXHAUSTED) happen on demand and every request the
client sent is recorded. Nothing in the client is replaced: the calls go through
its real channel, stubs, deadlines and back-off.
"""

import concurrent.futures
import threading
import time

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import cli, client as client_lib
from serving.client import (Client, InvalidArgumentError, ResourceExhaustedError, ServingError,
                            UnavailableError)

BUSY = (grpc.StatusCode.RESOURCE_EXHAUSTED,
        'server at capacity: 4 requests running and 8 queued (--max_queued_requests=8); retry later')


def _answer(request: predict_pb2.PredictRequest, pad: int = 0) -> predict_pb2.PredictResponse:
  """A `generate`-shaped answer that depends on every input, so a changed retry shows."""
  prompts = [p.decode() for p in tf.make_ndarray(request.inputs['prompt']).ravel()]
  num_chars = int(tf.make_ndarray(request.inputs['num_chars']))
  seed = int(tf.make_ndarray(request.inputs['seed']))
  texts = [(f'|{p}|{seed}|' * num_chars)[:num_chars] + 'x' * pad for p in prompts]
  response = predict_pb2.PredictResponse()
  response.model_spec.name = request.model_spec.name
  response.model_spec.version.value = 3
  response.model_spec.signature_name = request.model_spec.signature_name
  response.outputs['text'].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
  return response


class ScriptedServicer(prediction_service_pb2_grpc.PredictionServiceServicer,
                       model_service_pb2_grpc.ModelServiceServicer):
  """Answers Predict from `script` (a list of (code, details) or 'ok'; the last repeats)."""

  def __init__(self):
    self.script = ['ok']
    self.requests = []
    self.pad = 0
    self.states = [get_model_status_pb2.ModelVersionStatus.AVAILABLE]
    self._lock = threading.Lock()

  def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
    with self._lock:
      self.requests.append(request.SerializeToString())
      step = self.script[min(len(self.requests), len(self.script)) - 1]
    if step != 'ok':
      context.abort(*step)
    return _answer(request, self.pad)

  def GetModelStatus(self, request, context):  # noqa: N802
    return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
        get_model_status_pb2.ModelVersionStatus(version=3 + i, state=state)
        for i, state in enumerate(self.states)])


@pytest.fixture
def server():
  servicer = ScriptedServicer()
  grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, grpc_server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, grpc_server)
  port = grpc_server.add_insecure_port('127.0.0.1:0')
  grpc_server.start()
  servicer.target = f'127.0.0.1:{port}'
  try:
    yield servicer
  finally:
    grpc_server.stop(0).wait()


def _client(server, **kwargs) -> Client:
  kwargs.setdefault('backoff', 0.02)
  kwargs.setdefault('timeout', 30)
  return Client(server.target, **kwargs)


def test_busy_server_is_retried_with_the_same_request_until_it_answers(server):
  server.script = [BUSY, BUSY, 'ok']
  with _client(server, retries=4) as c:
    texts = c.generate(['ROMEO:', 'JULIET:'], num_chars=12, temperature=0.5)   # seed picked once
    assert c.retry_counts == {'RESOURCE_EXHAUSTED': 2}
  assert len(server.requests) == 3
  assert len(set(server.requests)) == 1          # the retries sent the very same request
  seed = int(tf.make_ndarray(predict_pb2.PredictRequest.FromString(server.requests[0])
                             .inputs['seed']))
  assert texts == [(f'|ROMEO:|{seed}|' * 12)[:12], (f'|JULIET:|{seed}|' * 12)[:12]]


def test_busy_retries_are_bounded_and_back_off(server):
  server.script = [BUSY]
  with _client(server, retries=3, backoff=0.05, max_backoff=0.1) as c:
    t = time.monotonic()
    with pytest.raises(ResourceExhaustedError) as raised:
      c.generate('ROMEO:', num_chars=5, seed=1)
    waited = time.monotonic() - t
  assert len(server.requests) == 4               # the first try and 3 retries, no more
  e = raised.value
  assert isinstance(e, ServingError)
  assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.details == BUSY[1]
  assert e.target == server.target
  # Jittered back-off: each wait is 50-100 % of min(0.1, 0.05 * 2^attempt): at least 0.125 s.
  assert waited >= 0.125


def test_message_over_a_size_limit_is_not_retried(server):
  server.pad = 100_000                         # a 100 kB answer to a client that takes 16 kB
  with _client(server, retries=4, max_message_bytes=16 * 1024) as c:
    with pytest.raises(ResourceExhaustedError) as raised:
      c.generate('ROMEO:', num_chars=5, seed=1)
    assert not c.retry_counts
  assert 'larger than max' in raised.value.details
  assert len(server.requests) == 1


def test_invalid_argument_is_raised_at_once(server):
  server.script = [(grpc.StatusCode.INVALID_ARGUMENT, 'num_chars must be in [1, 10000]; got 99999')]
  with _client(server, retries=4) as c, pytest.raises(InvalidArgumentError) as raised:
    c.generate('ROMEO:', num_chars=99999, seed=1)
  assert raised.value.details == 'num_chars must be in [1, 10000]; got 99999'
  assert len(server.requests) == 1


def test_unavailable_is_retried_then_raised(server):
  server.script = [(grpc.StatusCode.UNAVAILABLE, 'restarting'), 'ok']
  with _client(server, retries=2) as c:
    assert c.generate('A', num_chars=3, seed=2) == ['|A|']
    assert c.retry_counts == {'UNAVAILABLE': 1}
  server.script = [(grpc.StatusCode.UNAVAILABLE, 'restarting')]
  server.requests.clear()
  with _client(server, retries=2) as c, pytest.raises(UnavailableError):
    c.generate('A', num_chars=3, seed=2)
  assert len(server.requests) == 3


def test_library_has_no_command_line():
  """The CLI moved to serving/cli.py; the library only keeps the deprecated `-m` alias."""
  assert not hasattr(client_lib, 'build_arg_parser') and not hasattr(client_lib, 'main')
  assert cli.build_arg_parser().prog == 'python -m serving.cli'


def test_cli_generate_prints_prompt_and_text(server, capsys):
  code = cli.main(['generate', f'--target={server.target}', '--prompt=ROMEO:', '--prompt=KING:',
                   '--num-chars=9', '--seed=4'])
  out = capsys.readouterr().out
  assert code == 0
  assert out == 'ROMEO:|ROMEO:|4\n-----\nKING:|KING:|4|\n'


def test_cli_reports_a_busy_server_with_a_hint(server, capsys):
  server.script = [BUSY]
  code = cli.main(['generate', f'--target={server.target}', '--retries=1', '--num-chars=3'])
  err = capsys.readouterr().err
  assert code == 1
  assert err.splitlines()[0] == f'error: RESOURCE_EXHAUSTED: {BUSY[1]}'
  assert err.splitlines()[1].startswith('hint: the server stayed at capacity')
  assert len(server.requests) == 2


def test_cli_status_is_a_readiness_probe(server, capsys):
  assert cli.main(['status', f'--target={server.target}']) == 0
  assert capsys.readouterr().out == 'char_rnn version 3: AVAILABLE\n'
  server.states = [get_model_status_pb2.ModelVersionStatus.LOADING]
  assert cli.main(['status', f'--target={server.target}']) == 1
  assert capsys.readouterr().out == 'char_rnn version 3: LOADING\n'


def test_cli_local_errors_exit_2(server, capsys):
  assert cli.main(['score', f'--target={server.target}']) == 2
  assert capsys.readouterr().err == 'error: give --text or --file\n'
