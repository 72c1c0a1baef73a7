"""Hostile and oversized requests against `python -m serving.server`, over gRPC and REST.

The server runs as a subprocess (its RSS is its own, read with psutil) on
loopback, with the default per-request limits and a small capacity
(2 computing + 2 waiting predicts) so that "busy" is cheap to reach. It serves
two models: `char_rnn` (tiny GRU-16, fast) and `slow` (GRU-256, whose
64 x 10,000-character generate takes many seconds).

Each case of the table sends one bad request and asserts the code and the
message (which names the limit and its value), then that a normal request
still succeeds and the server's RSS grew by less than RSS_BOUND_MB over the
RSS before the case. Then: the deadline test (a 64 x 10,000-character generate
cut at 1 s, then a 5-character request within 2 s), a client that goes away
mid-request (the server stops using CPU), capacity (RESOURCE_EXHAUSTED / 429
at once while health still answers), 400 half-open connections.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.test_serving_helpers import (REPO_DIR, free_port, push, slow_version_dir,
                                        tiny_version_dir)

# Growth of the server's RSS allowed per case (a 16 MB body is parsed into
# Python objects and tensors that the allocator may keep for reuse).
RSS_BOUND_MB = 150
LIMITS = dict(max_request_bytes=16 * 2**20, max_tensor_elements=4 * 2**20,
              max_batch_rows=1024, max_string_bytes=100_000, max_request_work=1_000_000)


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  root = tmp_path_factory.mktemp('hostile')
  models = root / 'models'
  push(str(models / 'char_rnn'), 1, tiny_version_dir())
  push(str(models / 'slow'), 1, slow_version_dir())
  outside = root / 'outside'
  push(str(outside / 'char_rnn'), 1, tiny_version_dir())
  (models / 'sneaky').symlink_to(outside / 'char_rnn')
  config = root / 'models.config'
  config.write_text(''.join(
      f'model_config_list {{ config {{ name: "{n}" base_path: "{models / n}" '
      'model_platform: "tensorflow" } }\n' for n in ('char_rnn', 'slow'))
      .replace(' }\nmodel_config_list {', ''))
  grpc_port, rest_port = free_port(), free_port()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  log_path = root / 'server.log'
  log = open(log_path, 'w')
  process = subprocess.Popen(
      [sys.executable, '-m', 'serving.server', f'--port={grpc_port}',
       f'--rest_api_port={rest_port}', f'--model_config_file={config}',
       '--file_system_poll_wait_seconds=0', '--max_concurrent_predicts=2',
       '--max_queued_predicts=2', '--rest_body_timeout_seconds=2',
       '--rest_idle_timeout_seconds=3', '--enable_reload_config',
       f'--reload_config_allowed_roots={models}'] +
      [f'--{k}={v}' for k, v in LIMITS.items()],
      cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
  channel = grpc.insecure_channel(f'127.0.0.1:{grpc_port}', options=[
      ('grpc.max_send_message_length', 64 * 2**20),
      ('grpc.max_receive_message_length', 64 * 2**20)])
  info = type('Server', (), {})()
  info.process, info.grpc_port, info.rest_port = process, grpc_port, rest_port
  info.models_root, info.outside, info.log_path = models, outside, log_path
  info.channel = channel
  info.predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  info.model_service = model_service_pb2_grpc.ModelServiceStub(channel)
  info.psutil = psutil.Process(process.pid)
  deadline = time.monotonic() + 180
  while True:
    try:
      _status(info, 'slow')
      break
    except grpc.RpcError:
      if process.poll() is not None or time.monotonic() > deadline:
        raise AssertionError('server did not start:\n' + log_path.read_text()[-3000:])
      time.sleep(0.3)
  yield info
  channel.close()
  process.send_signal(signal.SIGTERM)
  try:
    process.wait(timeout=30)
  except subprocess.TimeoutExpired:
    process.kill()
  log.close()


# ------------------------------------------------------------------ request helpers
def _status(server, name='char_rnn', timeout=10):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = name
  return server.model_service.GetModelStatus(request, timeout=timeout)


def _tensor(value, dtype=None):
  if isinstance(value, tensor_pb2.TensorProto):
    return value
  return tf.make_tensor_proto(value, dtype)


def generate_request(model='char_rnn', prompt=('ROMEO:',), num_chars=5, temperature=1.0,
                     seed=1, **overrides):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = 'generate'
  inputs = {'prompt': _tensor(prompt if isinstance(prompt, tensor_pb2.TensorProto)
                             else list(prompt), tf.string),
            'num_chars': _tensor(num_chars, tf.int32),
            'temperature': _tensor(temperature, tf.float32), 'seed': _tensor(seed, tf.int64)}
  inputs.update(overrides)
  for k, v in inputs.items():
    request.inputs[k].CopyFrom(v)
  return request


def _grpc(server, request, timeout=30):
  """(code name, details) of one Predict."""
  try:
    server.predict.Predict(request, timeout=timeout)
    return 'OK', ''
  except grpc.RpcError as e:
    return e.code().name, e.details()


def _rest(server, method, path, body=None, headers=None, timeout=30):
  """(HTTP status, JSON or text) of one REST call; body may be bytes or a JSON value."""
  data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
  request = urllib.request.Request(f'http://127.0.0.1:{server.rest_port}{path}', data=data,
                                   method=method, headers=headers or {})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as r:
      status, raw = r.status, r.read()
  except urllib.error.HTTPError as e:
    status, raw = e.code, e.read()
  try:
    return status, json.loads(raw)
  except ValueError:
    return status, raw.decode('utf-8', 'replace')


def _raw(server, data: bytes, read_timeout=10.0) -> bytes:
  """Sends raw bytes on one connection; returns what came back until close or timeout."""
  with socket.create_connection(('127.0.0.1', server.rest_port), timeout=read_timeout) as s:
    s.sendall(data)
    chunks = []
    try:
      while True:
        chunk = s.recv(65536)
        if not chunk:
          break
        chunks.append(chunk)
        if b'\r\n\r\n' in b''.join(chunks) and _complete(b''.join(chunks)):
          break
    except socket.timeout:
      pass
    return b''.join(chunks)


def _complete(response: bytes) -> bool:
  head, _, body = response.partition(b'\r\n\r\n')
  for line in head.split(b'\r\n'):
    if line.lower().startswith(b'content-length:'):
      return len(body) >= int(line.split(b':')[1])
  return False


def _http_status(response: bytes) -> int:
  return int(response.split(b' ', 2)[1]) if response.startswith(b'HTTP/') else 0


def _json_body(response: bytes):
  head, _, body = response.partition(b'\r\n\r\n')
  for line in head.split(b'\r\n'):
    if line.lower().startswith(b'content-length:'):
      body = body[:int(line.split(b':')[1])]
  return json.loads(body or b'null')


PREDICT = '/v1/models/char_rnn:predict'


def _rest_generate(**inputs):
  body = {'prompt': ['ROMEO:'], 'num_chars': 5, 'temperature': 1.0, 'seed': 1}
  body.update(inputs)
  return {'signature_name': 'generate', 'inputs': body}


# ------------------------------------------------------------------ the table
def _proto_with_shape(dims, values=('a',), dtype=types_pb2.DT_STRING):
  proto = tensor_pb2.TensorProto(dtype=dtype)
  for d in dims:
    proto.tensor_shape.dim.add(size=d)
  if dtype == types_pb2.DT_STRING:
    proto.string_val.extend(v.encode() if isinstance(v, str) else v for v in values)
  return proto


def _bad_content():
  proto = _tensor(np.zeros([4], np.float32))
  proto.tensor_content = b'\x00' * 3
  return proto


def _unknown_rank():
  proto = _tensor(['a'], tf.string)
  proto.tensor_shape.unknown_rank = True
  return proto


def _reload(server, base_path):
  request = model_management_pb2.ReloadConfigRequest()
  for name, base in (('char_rnn', str(server.models_root / 'char_rnn')),
                     ('slow', str(server.models_root / 'slow')), ('x', base_path)):
    request.config.model_config_list.config.add(name=name, base_path=base,
                                                model_platform='tensorflow')
  try:
    server.model_service.HandleReloadConfigRequest(request, timeout=30)
    return 'OK', ''
  except grpc.RpcError as e:
    return e.code().name, e.details()


def _status_code(server, name):
  try:
    _status(server, name)
    return 'OK', ''
  except grpc.RpcError as e:
    return e.code().name, e.details()


def _lying_content_length(server):
  started = time.monotonic()
  response = _raw(server, b'POST ' + PREDICT.encode() + b' HTTP/1.1\r\nHost: x\r\n'
                  b'Content-Length: 1000\r\n\r\n{"instances": [', read_timeout=20)
  waited = time.monotonic() - started
  # body_timeout (2 s here) closes the connection; no handler ever ran.
  return ('closed' if response in (b'',) or _http_status(response) == 400 else
          _http_status(response)), f'closed after {waited:.1f} s'


def _short_content_length(server):
  # Says 2 bytes, sends more: the first 2 are the body, the rest is a bad next request.
  response = _raw(server, b'POST ' + PREDICT.encode() + b' HTTP/1.1\r\nHost: x\r\n'
                  b'Content-Length: 2\r\n\r\n{}GARBAGE\r\n\r\n')
  return _http_status(response), _json_body(response)['error']


def _header_only(server, content_length: bytes):
  response = _raw(server, b'POST ' + PREDICT.encode() + b' HTTP/1.1\r\nHost: x\r\n'
                  b'Content-Length: ' + content_length + b'\r\n\r\n')
  return _http_status(response), _json_body(response)['error']


def _post_big(server, body: bytes):
  """Headers first: the 413 comes from Content-Length, before any of the body is read."""
  with socket.create_connection(('127.0.0.1', server.rest_port), timeout=10) as s:
    s.sendall(b'POST ' + PREDICT.encode() + b' HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n'
              b'Content-Type: application/json\r\n\r\n' % len(body))
    data = b''
    while not _complete(data):
      more = s.recv(65536)
      if not more:
        break
      data += more
  return _http_status(data), _json_body(data)['error']


def _chunked_oversize(server):
  """A chunked body with no Content-Length, 17 MiB in 1 MiB chunks: 413 while reading."""
  with socket.create_connection(('127.0.0.1', server.rest_port), timeout=20) as s:
    s.sendall(b'POST ' + PREDICT.encode() + b' HTTP/1.1\r\nHost: x\r\n'
              b'Transfer-Encoding: chunked\r\n\r\n')
    chunk = b'x' * 2**20
    try:
      for _ in range(17):
        s.sendall(b'%x\r\n' % len(chunk) + chunk + b'\r\n')
      s.sendall(b'0\r\n\r\n')
    except (BrokenPipeError, ConnectionResetError):
      pass
    data = b''
    try:
      while not _complete(data):
        more = s.recv(65536)
        if not more:
          break
        data += more
    except (socket.timeout, ConnectionResetError):
      pass
  return _http_status(data), _json_body(data)['error'] if data else ''


def _rest_call(method, path, body=None, headers=None):
  def run(server):
    status, payload = _rest(server, method, path, body, headers)
    return status, payload['error'] if isinstance(payload, dict) and 'error' in payload \
        else str(payload)[:300]
  return run


def _grpc_call(build):
  return lambda server: _grpc(server, build())


def _deep_json(depth):
  return ('{"signature_name": "score", "instances": ' + '[' * depth + ']' * depth + '}').encode()


CASES = [
    # ---- gRPC: tensors that lie about their size
    ('grpc declared shape 2^40 with one value', _grpc_call(lambda: generate_request(
        prompt=_proto_with_shape([2**40]))), 'INVALID_ARGUMENT',
     'has more than 4194304 elements (--max_tensor_elements)'),
    ('grpc declared shape 2^20 with one value', _grpc_call(lambda: generate_request(
        prompt=_proto_with_shape([2**20]))), 'INVALID_ARGUMENT',
     'declared shape [1048576] holds 1048576 values but 1 were sent'),
    ('grpc negative dimension', _grpc_call(lambda: generate_request(
        prompt=_proto_with_shape([-1]))), 'INVALID_ARGUMENT', 'dimension -1 is negative'),
    ('grpc tensor_content too short', _grpc_call(lambda: generate_request(
        temperature=_bad_content())), 'INVALID_ARGUMENT', 'needs 16 bytes of tensor_content'),
    ('grpc unknown rank', _grpc_call(lambda: generate_request(prompt=_unknown_rank())),
     'INVALID_ARGUMENT', 'must have a known shape'),
    ('grpc rank 40', _grpc_call(lambda: generate_request(prompt=_proto_with_shape(
        [1] * 40))), 'INVALID_ARGUMENT', 'rank 40 is over 32'),
    ('grpc complex dtype', _grpc_call(lambda: generate_request(
        temperature=tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64))),
     'INVALID_ARGUMENT', 'dtype DT_COMPLEX64 is not supported'),
    # ---- gRPC: knobs
    ('grpc NaN temperature', _grpc_call(lambda: generate_request(temperature=float('nan'))),
     'INVALID_ARGUMENT', 'temperature must be >= 0 and finite (0 = greedy), got nan'),
    ('grpc infinite temperature', _grpc_call(lambda: generate_request(temperature=float('inf'))),
     'INVALID_ARGUMENT', 'got inf'),
    ('grpc negative temperature', _grpc_call(lambda: generate_request(temperature=-0.5)),
     'INVALID_ARGUMENT', 'temperature must be >= 0'),
    ('grpc negative num_chars', _grpc_call(lambda: generate_request(num_chars=-3)),
     'INVALID_ARGUMENT', 'num_chars must be >= 0'),
    # ---- gRPC: size
    ('grpc 200,000 rows', _grpc_call(lambda: generate_request(prompt=[''] * 200_000)),
     'INVALID_ARGUMENT', 'input "prompt" has 200000 rows; the limit is 1024 (--max_batch_rows)'),
    ('grpc one 32 MB row', _grpc_call(lambda: generate_request(prompt=['x' * 32_000_000])),
     'RESOURCE_EXHAUSTED', f'vs. {16 * 2**20})'),
    ('grpc one 200 kB row', _grpc_call(lambda: generate_request(prompt=['x' * 200_000])),
     'INVALID_ARGUMENT', 'string of 200000 bytes; the limit is 100000 (--max_string_bytes)'),
    ('grpc 10,000 empty rows + one long', _grpc_call(lambda: generate_request(
        prompt=[''] * 10_000 + ['x' * 50_000])), 'INVALID_ARGUMENT',
     'has 10001 rows; the limit is 1024'),
    ('grpc 1,000 empty rows + one 2 kB row', _grpc_call(lambda: generate_request(
        prompt=[''] * 1000 + ['x' * 2000])), 'INVALID_ARGUMENT',
     'request asks for 2007005 character steps (rows 1001 x (longest string 2000 + num_chars 5)); '
     'the limit is 1000000 (--max_request_work)'),
    ('grpc 200 rows x 10,000 chars', _grpc_call(lambda: generate_request(
        prompt=['a'] * 200, num_chars=10_000)), 'INVALID_ARGUMENT', '(--max_request_work)'),
    ('grpc invalid UTF-8 prompt is served', _grpc_call(lambda: generate_request(
        prompt=_proto_with_shape([2], [b'\xff\xfe\x80', b'ROMEO:\xc3']))), 'OK', ''),
    # ---- gRPC: names and admin
    ('grpc path traversal in model name', _grpc_call(lambda: generate_request(
        model='../../../etc/passwd')), 'NOT_FOUND',
     'Servable not found for request: Latest(../../../etc/passwd)'),
    ('grpc status of a traversal name', lambda s: _status_code(s, '../char_rnn'), 'NOT_FOUND',
     'Could not find any versions of model ../char_rnn'),
    ('grpc reload config outside the allowed roots', lambda s: _reload(s, '/etc'),
     'PERMISSION_DENIED', 'base_path of model x is outside the roots this server allows'),
    ('grpc reload config through a symlink out', lambda s: _reload(
        s, str(s.models_root / 'sneaky')), 'PERMISSION_DENIED', 'outside the roots'),
    ('grpc reload config with .. out of a root', lambda s: _reload(
        s, str(s.models_root / '..' / 'outside' / 'char_rnn')), 'PERMISSION_DENIED',
     'outside the roots'),
    # ---- REST: bodies
    ('rest 200,000-deep nested JSON', _rest_call('POST', PREDICT, _deep_json(200_000)), 400,
     'JSON Parse error: nested too deeply'),
    ('rest 40-deep nested instances', _rest_call('POST', PREDICT, _deep_json(40)), 400,
     'nested deeper than 32 levels'),
    ('rest invalid UTF-8 body', _rest_call('POST', PREDICT, b'{"instances": ["\xff"]}'), 400,
     'JSON Parse error: the body is not UTF-8'),
    ('rest not JSON', _rest_call('POST', PREDICT, b'{"instances": ['), 400, 'JSON Parse error'),
    ('rest NaN temperature', _rest_call('POST', PREDICT, json.dumps(_rest_generate(
        temperature=float('nan'))).encode()), 400, 'temperature must be >= 0 and finite'),
    ('rest 1e999 temperature', _rest_call('POST', PREDICT, json.dumps(_rest_generate()).replace(
        '"temperature": 1.0', '"temperature": 1e999').encode()), 400, 'got inf'),
    ('rest num_chars 2^40', _rest_call('POST', PREDICT, _rest_generate(num_chars=2**40)), 400,
     'Failed to convert input "num_chars" to int32: a value is out of range'),
    ('rest ragged prompts', _rest_call('POST', PREDICT, _rest_generate(prompt=['a', ['b']])), 400,
     'Input "prompt" is ragged'),
    ('rest 200,000 instances', _rest_call('POST', PREDICT, {
        'signature_name': 'score', 'instances': [''] * 200_000}), 400,
     "'instances' has 200000 rows; the limit is 1024 (--max_batch_rows)"),
    ('rest 10,000 empty rows + one long', _rest_call('POST', PREDICT, {
        'signature_name': 'score', 'inputs': {'text': [''] * 10_000 + ['x' * 50_000]}}), 400,
     'has 10001 rows; the limit is 1024'),
    ('rest 64,000 x 300 chars score body', lambda s: _post_big(s, json.dumps({
        'signature_name': 'score', 'instances': ['x' * 300] * 64_000}).encode()), 413,
     'over the limit of 16777216 bytes (--max_request_bytes)'),
    ('rest one 32 MB row', lambda s: _post_big(s, json.dumps(_rest_generate(
        prompt=['x' * 32_000_000])).encode()), 413, 'over the limit of 16777216 bytes'),
    ('rest negative Content-Length', lambda s: _header_only(s, b'-5'), 400,
     'Content-Length must be a non-negative integer'),
    ('rest Content-Length of 1 TB', lambda s: _header_only(s, b'1000000000000'), 413,
     'Request body of 1000000000000 bytes is over the limit of 16777216 bytes'),
    ('rest Content-Length shorter than the body', _short_content_length, 400,
     "Missing 'inputs' or 'instances' key"),
    ('rest Content-Length longer than the body', _lying_content_length, 'closed', 'closed after'),
    ('rest chunked body over the limit', _chunked_oversize, 413, 'over the limit of 16777216'),
    # ---- REST: methods and paths
    ('rest PUT', _rest_call('PUT', PREDICT, b'{}'), 405, 'Method PUT is not allowed'),
    ('rest DELETE', _rest_call('DELETE', '/v1/models/char_rnn'), 405, 'Method DELETE'),
    ('rest unknown method', lambda s: (_http_status(_raw(
        s, b'BREW /v1/models/char_rnn HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')),
        _json_body(_raw(s, b'BREW /v1/models/char_rnn HTTP/1.1\r\nHost: x\r\n'
                        b'Content-Length: 0\r\n\r\n'))['error']), 405, 'Method BREW'),
    ('rest traversal in the model name', _rest_call(
        'POST', '/v1/models/..%2F..%2Fetc%2Fpasswd:predict', {'instances': ['a']}), 404,
     'Servable not found for request: Latest(../../etc/passwd)'),
    ('rest traversal in the path', lambda s: (_http_status(_raw(
        s, b'GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n')), 'raw'), 400, 'raw'),
    ('rest traversal under /playground', lambda s: (_http_status(_raw(
        s, b'GET /playground/..%2F..%2Fserving%2Fserver.py HTTP/1.1\r\nHost: x\r\n\r\n')),
        'raw'), 403, 'raw'),
    ('rest unknown path', _rest_call('GET', '/etc/passwd'), 404, 'Not found: /etc/passwd'),
    ('rest huge version number', _rest_call(
        'GET', '/v1/models/char_rnn/versions/99999999999999999999999'), 400,
     'is not an int64'),
]


def _rss_mb(server) -> float:
  return server.psutil.memory_info().rss / 2**20


def _normal_request_succeeds(server):
  code, details = _grpc(server, generate_request(), timeout=60)
  assert code == 'OK', details
  status, payload = _rest(server, 'POST', PREDICT, _rest_generate())
  assert status == 200 and len(payload['outputs']['text'][0]) == 5, payload


@pytest.mark.parametrize('name,action,code,message', CASES, ids=[c[0] for c in CASES])
def test_hostile_request_is_refused_with_its_code_and_the_server_carries_on(
    server, name, action, code, message):
  before = _rss_mb(server)
  got_code, got_message = action(server)
  assert got_code == code, (got_code, got_message)
  assert message in got_message, got_message
  assert 'Traceback' not in str(got_message) and REPO_DIR not in str(got_message)
  _normal_request_succeeds(server)
  grown = _rss_mb(server) - before
  assert grown < RSS_BOUND_MB, f'RSS grew {grown:.0f} MB (bound {RSS_BOUND_MB})'


def test_the_table_has_at_least_30_cases_over_both_apis():
  assert len(CASES) >= 30
  assert sum(c[0].startswith('grpc') for c in CASES) >= 10
  assert sum(c[0].startswith('rest') for c in CASES) >= 10


# ------------------------------------------------------------------ time and capacity
def _cpu_seconds(server) -> float:
  times = server.psutil.cpu_times()
  return times.user + times.system


def _long_generate():
  return generate_request(model='slow', prompt=['ROMEO:'] * 64, num_chars=10_000)


def test_a_64_x_10000_generate_cut_at_1_s_frees_the_server_for_a_5_char_request(server):
  started = time.monotonic()
  code, details = _grpc(server, _long_generate(), timeout=1.0)
  assert code == 'DEADLINE_EXCEEDED', details
  assert time.monotonic() - started < 3
  started = time.monotonic()
  code, details = _grpc(server, generate_request(model='slow'), timeout=30)
  took = time.monotonic() - started
  assert code == 'OK', details
  assert took < 2.0, f'the 5-character request took {took:.2f} s'
  # And the cut run really stopped: the server idles.
  cpu = _cpu_seconds(server)
  time.sleep(1.0)
  assert _cpu_seconds(server) - cpu < 0.5


def test_a_client_that_goes_away_stops_its_run_over_grpc_and_rest(server):
  future = server.predict.Predict.future(_long_generate(), timeout=120)
  time.sleep(0.8)
  future.cancel()
  time.sleep(1.2)                    # the watcher cancels within ~0.1 s
  cpu = _cpu_seconds(server)
  time.sleep(1.0)
  assert _cpu_seconds(server) - cpu < 0.5, 'the cancelled gRPC run kept computing'

  body = json.dumps({'signature_name': 'generate', 'inputs': {
      'prompt': ['ROMEO:'] * 64, 'num_chars': 10_000, 'temperature': 1.0, 'seed': 1}}).encode()
  with socket.create_connection(('127.0.0.1', server.rest_port)) as s:
    s.sendall(b'POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n'
              % len(body) + body)
    time.sleep(0.8)
  time.sleep(1.2)
  cpu = _cpu_seconds(server)
  time.sleep(1.0)
  assert _cpu_seconds(server) - cpu < 0.5, 'the abandoned REST run kept computing'
  _normal_request_succeeds(server)


def test_beyond_capacity_predicts_are_refused_at_once_and_health_still_answers(server):
  # 2 computing + 2 waiting fill the server (--max_concurrent_predicts=2 --max_queued_predicts=2).
  futures = [server.predict.Predict.future(_long_generate(), timeout=60) for _ in range(4)]
  try:
    time.sleep(1.0)
    started = time.monotonic()
    code, details = _grpc(server, generate_request(), timeout=30)
    assert (code, time.monotonic() - started < 1.0) == ('RESOURCE_EXHAUSTED', True), details
    assert '--max_concurrent_predicts=2, --max_queued_predicts=2' in details
    status, payload = _rest(server, 'POST', PREDICT, _rest_generate())
    assert status == 429 and 'Server busy' in payload['error']
    for _ in range(3):
      started = time.monotonic()
      assert _status(server, timeout=5).model_version_status[0].state == 30   # AVAILABLE
      status, payload = _rest(server, 'GET', '/v1/models/char_rnn/metadata', timeout=5)
      assert status == 200
      assert time.monotonic() - started < 1.0, 'status + metadata took over a second'
  finally:
    for f in futures:
      f.cancel()
  time.sleep(1.0)
  _normal_request_succeeds(server)


def test_400_half_open_connections_do_not_stop_the_server(server):
  before = _rss_mb(server)
  sockets = []
  try:
    for i in range(400):
      s = socket.create_connection(('127.0.0.1', server.rest_port), timeout=10)
      s.sendall(b'POST ' + PREDICT.encode() + b' HTTP/1.1\r\nHost: x\r\nContent-Le')
      sockets.append(s)
    started = time.monotonic()
    _normal_request_succeeds(server)
    assert time.monotonic() - started < 10
  finally:
    for s in sockets:
      s.close()
  assert _rss_mb(server) - before < RSS_BOUND_MB
  # The idle timeout (3 s here) closes what clients leave open.
  s = socket.create_connection(('127.0.0.1', server.rest_port), timeout=15)
  started = time.monotonic()
  assert s.recv(1) == b''
  assert time.monotonic() - started < 12
  s.close()


def test_the_server_log_has_no_traceback_for_refused_requests(server):
  text = server.log_path.read_text()
  assert 'Traceback' not in text, text[-3000:]
  assert server.process.poll() is None
