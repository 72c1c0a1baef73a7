"""Soak: the server under mixed, hostile and abandoned traffic while versions roll.

Why: the limits, the admission queue and the cancellation in serving/ are each
tested alone (tests/test_serving_*.py); this checks that together, for minutes,
they keep the promise an operator cares about: every well-formed request is
answered, every hostile one is refused with its code, clients that vanish cost
nothing lasting, and the server's memory stays flat while new versions load and
old ones unload.

What it does, all on loopback:

  * exports one small char_rnn SavedModel (components.model, random weights: the
    soak is about the server, not the text) and starts `python -m serving.server`
    as a subprocess over a base directory it owns, keeping 3 versions loaded
    (`latest {num_versions: 3}`) so a stream pinned to its version (5-20 one_step
    round trips) ends even if two newer versions arrive meanwhile;
  * publishes a new version every --push-every seconds the way a careful pusher
    does: copy into a staging directory beside the base, then os.rename into
    <base>/<version> (atomic: the server never sees half a version);
  * runs client threads for --duration seconds: gRPC `generate`, `score`,
    `one_step` streams (serving.client.Client), REST :predict for generate and
    score (http.client), health (GetModelStatus, GET /v1/models/...), a hostile
    thread cycling through the HOSTILE table (each case must get its code), and a
    thread that abandons requests: subprocess clients SIGKILLed while their
    request is in flight (gRPC and REST), gRPC calls cancelled, REST bodies cut
    off mid-way;
  * samples the server's RSS and CPU every second (psutil).

Well-formed requests that the server sheds while busy (RESOURCE_EXHAUSTED / 429)
are retried with back-off, at most --retries times, as serving.client does; one
that still fails counts as a failure. Output: a table on stdout and
bench/results/soak.json (or --out): per request kind count / failures / p50 /
p99, per hostile case what came back, abandoned requests, RSS over time and its
growth after warm-up, the machine, the load, the exact command.

  .venv/bin/python -m bench.soak [--duration 600] [--push-every 30] [--out PATH]
"""

import argparse
import collections
import concurrent.futures
import http.client
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

if __package__ in (None, ''):   # `python bench/soak/run.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import grpc
import numpy as np
import psutil
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench import common
from serving.client import Client

MODEL = 'char_rnn'
MAX_GENERATE_CHARS = 10_000
PREDICT_PATH = f'/v1/models/{MODEL}:predict'
PREDICT_METHOD = '/tensorflow.serving.PredictionService/Predict'


# --------------------------------------------------------------------- model and versions
def export_model(directory: str, rnn_units: int, embedding_dim: int) -> Tuple[str, str]:
  """One SavedModel exported as the Trainer does; returns (its path, the corpus text)."""
  from components.model import build_keras_model, export_serving_model
  from components.text import CharVocab
  with open(common.CORPUS_PATH, encoding='utf-8') as f:
    corpus = f.read()
  vocab = CharVocab.from_text(corpus)
  cfg = dict(embedding_dim=embedding_dim, rnn_type='gru', rnn_units=rnn_units, num_layers=1,
             dropout=0.0)
  tf.keras.utils.set_random_seed(0)
  keras_model = build_keras_model(len(vocab), **cfg)
  path = os.path.join(directory, 'export')
  export_serving_model(keras_model, vocab.tokens, cfg, MAX_GENERATE_CHARS, path)
  return path, corpus


class Publisher:
  """New versions by copy-to-staging then rename: complete or invisible, never half."""

  def __init__(self, export_dir: str, base: str, staging: str):
    self.export_dir, self.base, self.staging = export_dir, base, staging
    self.version = 0
    self.pushed: List[Tuple[float, int]] = []

  def push(self, t: float) -> int:
    self.version += 1
    tmp = os.path.join(self.staging, str(self.version))
    shutil.copytree(self.export_dir, tmp)
    os.rename(tmp, os.path.join(self.base, str(self.version)))
    self.pushed.append((round(t, 1), self.version))
    return self.version


def model_config_text(base: str) -> str:
  return ('model_config_list {\n  config {\n'
          f'    name: "{MODEL}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n'
          '    model_version_policy { latest { num_versions: 3 } }\n  }\n}\n')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# --------------------------------------------------------------------- bookkeeping
class Ledger:
  """Thread-safe counts and latencies per request kind."""

  def __init__(self):
    self._lock = threading.Lock()
    self.latencies: Dict[str, List[float]] = collections.defaultdict(list)
    self.failures: Dict[str, int] = collections.Counter()
    self.failure_samples: List[str] = []
    self.shed: Dict[str, int] = collections.Counter()       # 429 / RESOURCE_EXHAUSTED retried
    self.hostile: Dict[str, Dict[str, Any]] = {}
    self.abandoned: Dict[str, int] = collections.Counter()
    self.reconnects: Dict[str, int] = collections.Counter()  # kept-alive REST closed by server
    self.measuring = False                                    # after the warm-up

  def ok(self, kind: str, seconds: float) -> None:
    with self._lock:
      self.latencies[kind].append(seconds)

  def fail(self, kind: str, message: str) -> None:
    with self._lock:
      self.failures[kind] += 1
      if len(self.failure_samples) < 30:
        self.failure_samples.append(f'{kind}: {message[:300]}')

  def hostile_result(self, case: str, expected, got, message: str, leak: bool) -> None:
    with self._lock:
      row = self.hostile.setdefault(case, {'expected': sorted(map(str, expected)), 'count': 0,
                                           'refused_as_expected': 0, 'got': collections.Counter(),
                                           'leaky_messages': 0, 'message': ''})
      row['count'] += 1
      row['got'][str(got)] += 1
      if got in expected:
        row['refused_as_expected'] += 1
      if leak:
        row['leaky_messages'] += 1
      if not row['message'] or got not in expected:
        row['message'] = message[:200]


def timed(ledger: Ledger, kind: str, fn: Callable[[], None]) -> None:
  t = time.perf_counter()
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except  (every failure is counted, none hidden)
    ledger.fail(kind, f'{type(e).__name__}: {e}')
    return
  ledger.ok(kind, time.perf_counter() - t)


# --------------------------------------------------------------------- REST client
class Rest:
  """A keep-alive HTTP/1.1 connection; sheds (429/503) are retried with back-off."""

  def __init__(self, port: int, ledger: Ledger, kind: str, retries: int):
    self.port, self.ledger, self.kind, self.retries = port, ledger, kind, retries
    self._conn: Optional[http.client.HTTPConnection] = None

  def request(self, method: str, path: str, body: Optional[bytes] = None,
              timeout: float = 60) -> Tuple[int, bytes]:
    for attempt in range(self.retries + 1):
      response, data = self._once(method, path, body, timeout)
      if response.status not in (429, 503) or attempt == self.retries:
        return response.status, data
      self.ledger.shed[self.kind] += 1
      time.sleep(min(2.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0))
    raise AssertionError('unreachable')

  def _once(self, method, path, body, timeout):
    """One exchange; a kept-alive connection the server had closed is reopened once."""
    reused = self._conn is not None
    if self._conn is None:
      self._conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
    try:
      self._conn.request(method, path, body,
                         {'Content-Type': 'application/json'} if body is not None else {})
      response = self._conn.getresponse()
      data = response.read()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
      self.close()
      if not reused:
        raise
      self.ledger.reconnects[self.kind] += 1      # idle keep-alive closed by the server
      return self._once(method, path, body, timeout)
    except (OSError, http.client.HTTPException):
      self.close()
      raise
    if response.getheader('Connection', '').lower() == 'close':
      self.close()
    return response, data

  def close(self) -> None:
    if self._conn is not None:
      self._conn.close()
      self._conn = None


def rest_json(rest: Rest, method: str, path: str, payload=None) -> Any:
  body = None if payload is None else json.dumps(payload).encode()
  status, data = rest.request(method, path, body)
  if status != 200:
    raise RuntimeError(f'HTTP {status}: {data[:300]!r}')
  return json.loads(data)


# --------------------------------------------------------------------- hostile requests
def tensor(dtype, dims, **values) -> tensor_pb2.TensorProto:
  """A TensorProto built field by field, so its declared shape can lie."""
  proto = tensor_pb2.TensorProto(dtype=dtype, **values)
  proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
      dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
  return proto


def generate_request(prompts=('ROMEO:',), num_chars=10, temperature=1.0, seed=1,
                     signature='generate', model=MODEL,
                     override: Optional[Dict[str, Any]] = None) -> predict_pb2.PredictRequest:
  """A `generate` request; `override` replaces inputs by alias (None drops one)."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature
  inputs = {'prompt': tf.make_tensor_proto(list(prompts), dtype=tf.string),
            'num_chars': tf.make_tensor_proto(num_chars, dtype=tf.int32),
            'temperature': tf.make_tensor_proto(temperature, dtype=tf.float32),
            'seed': tf.make_tensor_proto(seed, dtype=tf.int64)}
  inputs.update(override or {})
  for alias, proto in inputs.items():
    if proto is not None:
      request.inputs[alias].CopyFrom(proto)
  return request


def one_step_request(states: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL
  request.model_spec.signature_name = 'one_step'
  request.inputs['inputs'].CopyFrom(tf.make_tensor_proto(['R'], dtype=tf.string))
  request.inputs['states'].CopyFrom(states)
  request.inputs['temperature'].CopyFrom(tf.make_tensor_proto(1.0, dtype=tf.float32))
  return request


INVALID, PRECONDITION, NOT_FOUND, EXHAUSTED = ('INVALID_ARGUMENT', 'FAILED_PRECONDITION',
                                               'NOT_FOUND', 'RESOURCE_EXHAUSTED')
RESET = 'connection reset'     # a REST refusal whose answer a reset overtook


def hostile_cases() -> List[Tuple[str, str, Any, set]]:
  """(name, 'grpc'|'rest'|'raw', request, expected codes): the soak's hostile mix.

  gRPC requests are PredictRequests, REST ones (method, path, body bytes), raw
  ones bytes written to the REST socket as they are. Codes follow TF Serving:
  INVALID_ARGUMENT / 400 for malformed or over-limit input, 413 for a body over
  the limit, RESOURCE_EXHAUSTED / 429 for capacity.
  """
  big = 2 ** 40
  oversized = json.dumps({'signature_name': 'score', 'instances': ['a' * (17 << 20)]}).encode()
  deep = b'[' * 200_000 + b']' * 200_000
  generate = lambda **kw: json.dumps({'signature_name': 'generate', 'inputs': {
      'prompt': ['ROMEO:'], 'num_chars': 10, 'temperature': 1.0, 'seed': 1, **kw}}).encode()
  return [
      ('grpc num_chars over the model limit', 'grpc',
       generate_request(num_chars=MAX_GENERATE_CHARS * 100), {INVALID}),
      ('grpc negative num_chars', 'grpc', generate_request(num_chars=-5), {INVALID}),
      ('grpc wrong dtype (temperature as string)', 'grpc',
       generate_request(override={'temperature': tf.make_tensor_proto('hot', dtype=tf.string)}),
       {INVALID}),
      ('grpc declared shape 2^40 with one string', 'grpc', generate_request(override={
          'prompt': tensor(types_pb2.DT_STRING, [big], string_val=[b'ROMEO:'])}), {INVALID}),
      ('grpc declared states [2^20, 2^20] with one float', 'grpc', one_step_request(
          tensor(types_pb2.DT_FLOAT, [2 ** 20, 2 ** 20], float_val=[0.0])), {INVALID}),
      ('grpc negative dimension', 'grpc', generate_request(override={
          'prompt': tensor(types_pb2.DT_STRING, [-5], string_val=[b'ROMEO:'])}), {INVALID}),
      ('grpc NaN temperature', 'grpc', generate_request(temperature=float('nan')), {INVALID}),
      ('grpc infinite temperature', 'grpc', generate_request(temperature=float('inf')), {INVALID}),
      ('grpc 200,000 rows', 'grpc', generate_request(prompts=[''] * 200_000, num_chars=1),
       {INVALID}),
      ('grpc one 4 MB row', 'grpc', generate_request(prompts=['a' * (4 << 20)], num_chars=1),
       {INVALID}),
      ('grpc 17 MB message (over --max_request_bytes)', 'grpc',
       generate_request(prompts=['a' * (17 << 20)], num_chars=1), {EXHAUSTED}),
      ('grpc work 1,000 rows x 2,000 chars (over --max_request_work)', 'grpc',
       generate_request(prompts=['ROMEO:'] * 1000, num_chars=2000), {INVALID}),
      ('grpc 1,000 empty rows + one 90 kB row', 'grpc',
       generate_request(prompts=[''] * 1000 + ['a' * 90_000], num_chars=1), {INVALID}),
      ('grpc unknown signature', 'grpc', generate_request(signature='nope'), {PRECONDITION}),
      ('grpc unknown model', 'grpc', generate_request(model='nope'), {NOT_FOUND}),
      ('grpc missing input', 'grpc', generate_request(override={'seed': None}), {INVALID}),
      ('rest garbage JSON', 'rest', ('POST', PREDICT_PATH, b'{"inputs": [1, 2,'), {400}),
      ('rest 200,000-deep JSON', 'rest', ('POST', PREDICT_PATH, deep), {400}),
      ('rest invalid UTF-8', 'rest', ('POST', PREDICT_PATH, b'{"inputs": "\xff\xfe"}'), {400}),
      ('rest wrong dtype', 'rest', ('POST', PREDICT_PATH, generate(temperature='hot')), {400}),
      ('rest NaN temperature', 'rest', ('POST', PREDICT_PATH, generate(temperature=float('nan'))),
       {400}),
      ('rest num_chars over the limit', 'rest',
       ('POST', PREDICT_PATH, generate(num_chars=MAX_GENERATE_CHARS * 100)), {400}),
      ('rest 200,000 rows', 'rest', ('POST', PREDICT_PATH, json.dumps(
          {'signature_name': 'score', 'instances': [''] * 200_000}).encode()), {400}),
      ('rest 17 MB body with Expect: 100-continue', 'raw',
       http_bytes('POST', PREDICT_PATH, oversized, expect_continue=True), {413}),
      # Without 100-continue the server answers 413 from Content-Length and closes
      # while the body still streams in; the client may see a reset instead.
      ('rest 17 MB body (over --max_request_bytes)', 'raw',
       http_bytes('POST', PREDICT_PATH, oversized), {413, RESET}),
      ('rest unknown model', 'rest', ('POST', '/v1/models/nope:predict', generate()), {404}),
      ('rest path traversal', 'rest',
       ('GET', '/v1/models/..%2F..%2F..%2Fetc%2Fpasswd', None), {400, 404}),
      ('rest PUT', 'rest', ('PUT', PREDICT_PATH, generate()), {405}),
      ('rest Content-Length 10^12', 'raw',
       b'POST ' + PREDICT_PATH.encode() + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n'
       b'Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{}', {413}),
      ('rest negative Content-Length', 'raw',
       b'POST ' + PREDICT_PATH.encode() + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n'
       b'Content-Type: application/json\r\nContent-Length: -5\r\n\r\n{}', {400}),
  ]


def _busy(code, message: str) -> bool:
  """A capacity refusal (admission queue full, gRPC's concurrent-RPC cap), not a verdict."""
  return code in (EXHAUSTED, 429) and any(
      marker in message.lower() for marker in ('busy', 'concurrent rpc limit'))


def _leaky(message: str, base: str) -> bool:
  return 'Traceback' in message or 'Internal error' in message or base in message


def http_bytes(method: str, path: str, body: bytes, expect_continue: bool = False) -> bytes:
  return (f'{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
          f'Content-Length: {len(body)}\r\nConnection: close\r\n'
          + ('Expect: 100-continue\r\n' if expect_continue else '') + '\r\n').encode() + body


def _raw_http(port: int, data: bytes, timeout: float = 30) -> Tuple[Any, str]:
  """Writes `data` while watching for an answer, as a careful HTTP client does (a
  server may refuse, 413, before the body is all sent, then close); with
  `Expect: 100-continue` the body waits for the server's 100 first."""
  head, _, body = data.partition(b'\r\n\r\n')
  head += b'\r\n\r\n'
  reply = b''
  try:
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
      s.sendall(head)
      if b'Expect: 100-continue' in head:
        readable, _, _ = select.select([s], [], [], timeout)
        if readable:
          reply = s.recv(65536)
          if reply.startswith(b'HTTP/1.1 100'):
            reply = reply.partition(b'\r\n\r\n')[2]
          else:
            body = b''                        # answered instead of 100: send nothing
      sent, deadline = 0, time.monotonic() + timeout
      while time.monotonic() < deadline:
        answered = b'\r\n\r\n' in reply
        readable, writable, _ = select.select(
            [s], [s] if sent < len(body) and not answered else [], [], 1)
        if readable:
          chunk = s.recv(65536)
          if not chunk:
            break
          reply += chunk
        elif writable:
          sent += s.send(body[sent:sent + 65536])
        elif answered:
          break
  except (ConnectionResetError, BrokenPipeError):
    if b'\r\n\r\n' not in reply:
      return RESET, 'the connection was reset before an answer could be read'
  except OSError as e:
    if not reply:
      return 0, f'{type(e).__name__}: {e}'
  status_line, _, rest = reply.partition(b'\r\n\r\n')
  try:
    return int(status_line.split(b' ')[1]), rest.decode('utf-8', 'replace')
  except (IndexError, ValueError):
    return 0, f'no HTTP answer within {timeout:.0f} s: {reply[:80]!r}'


# --------------------------------------------------------------------- abandoned requests
GRPC_CHILD = '''
import sys, grpc
target, data = sys.argv[1], sys.stdin.buffer.read()
call = grpc.insecure_channel(target).unary_unary(sys.argv[2])
print('sending', flush=True)
call(data, timeout=300)
print('answered', flush=True)
'''
REST_CHILD = '''
import sys, http.client
port, data = int(sys.argv[1]), sys.stdin.buffer.read()
conn = http.client.HTTPConnection('127.0.0.1', port, timeout=300)
conn.request('POST', sys.argv[2], data, {'Content-Type': 'application/json'})
print('sending', flush=True)
conn.getresponse().read()
print('answered', flush=True)
'''


def killed_child(ledger: Ledger, kind: str, argv: List[str], data: bytes) -> None:
  """Starts a client process, waits until its request is out, SIGKILLs it mid-request."""
  child = subprocess.Popen([sys.executable, '-c'] + argv, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  try:
    child.stdin.write(data)
    child.stdin.close()
    ready, _, _ = select.select([child.stdout], [], [], 60)
    if ready and child.stdout.readline().strip() == b'sending':
      time.sleep(random.uniform(0.2, 0.6))
      ready, _, _ = select.select([child.stdout], [], [], 0)
      ledger.abandoned[kind + (' (answered before the kill)' if ready else '')] += 1
    else:
      ledger.abandoned[kind + ' (child never sent)'] += 1
  finally:
    child.kill()
    child.wait()
    child.stdout.close()


# --------------------------------------------------------------------- the soak
def wait_until_serving(server: subprocess.Popen, target: str, log_path: str,
                       seconds: float = 300) -> None:
  """Returns once the first version answers; raises with the server's log if it died."""
  deadline = time.monotonic() + seconds
  with Client(target, MODEL, timeout=10, retries=0) as c:
    while True:
      if server.poll() is not None:
        with open(log_path, 'rb') as f:
          raise RuntimeError(f'the server exited with {server.returncode} before serving:\n'
                             + f.read()[-3000:].decode('utf-8', 'replace'))
      try:
        c.metadata()
        return
      except Exception:  # pylint: disable=broad-except  (UNAVAILABLE / NOT_FOUND while it starts)
        if time.monotonic() > deadline:
          raise
        time.sleep(0.5)


def main(argv=None) -> Dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--duration', type=float, default=600, help='seconds of traffic')
  p.add_argument('--push-every', type=float, default=30, help='seconds between new versions')
  p.add_argument('--warmup', type=float, default=None,
                 help='seconds before RSS growth is measured (default: 10%% of --duration, '
                      'at least 5)')
  p.add_argument('--model-dir', default=None,
                 help='serve copies of this exported char_rnn SavedModel instead of exporting '
                      'a GRU (--rnn-units, --embedding-dim) here')
  p.add_argument('--rnn-units', type=int, default=64)
  p.add_argument('--embedding-dim', type=int, default=16)
  p.add_argument('--grpc-generate-threads', type=int, default=2)
  p.add_argument('--burst-every', type=float, default=10,
                 help='seconds between bursts of concurrent well-formed generates')
  p.add_argument('--burst-grpc', type=int, default=24, help='gRPC requests in a burst')
  p.add_argument('--burst-rest', type=int, default=8, help='REST requests in a burst')
  p.add_argument('--abandon-chars', type=int, default=10_000,
                 help='num_chars of the requests that get abandoned (x 16 rows)')
  p.add_argument('--retries', type=int, default=8,
                 help='retries of a shed (RESOURCE_EXHAUSTED / 429) well-formed request')
  p.add_argument('--pause', type=float, default=0.05, help='seconds between a thread\'s requests')
  p.add_argument('--server-flag', action='append', default=[],
                 help='extra flag for python -m serving.server (repeatable)')
  p.add_argument('--without', default='',
                 help='comma-separated parts to leave out, to find what costs memory: '
                      'burst, hostile, abandon, push')
  p.add_argument('--out', default=os.path.join(common.RESULTS_DIR, 'soak.json'))
  args = p.parse_args(argv)
  args.without = set(filter(None, args.without.split(',')))
  unknown = args.without - {'burst', 'hostile', 'abandon', 'push'}
  if unknown:
    p.error(f'--without: unknown parts {sorted(unknown)}')
  warmup = args.warmup if args.warmup is not None else max(5.0, 0.1 * args.duration)
  run = common.Run('soak')
  started = time.monotonic()

  def phase(what: str) -> None:
    print(f'soak: {what} at {time.monotonic() - started:.1f} s', file=sys.stderr, flush=True)

  work = tempfile.mkdtemp(prefix='bench_soak_')
  base, staging = os.path.join(work, MODEL), os.path.join(work, 'staging')
  os.makedirs(base)
  os.makedirs(staging)
  config = os.path.join(work, 'models.config')
  with open(config, 'w') as f:
    f.write(model_config_text(base))
  grpc_port, rest_port = free_port(), free_port()
  server_cmd = [sys.executable, '-m', 'serving.server', '--host=127.0.0.1', f'--port={grpc_port}',
                f'--rest_api_port={rest_port}', f'--model_config_file={config}',
                '--file_system_poll_wait_seconds=1'] + args.server_flag
  log_path = os.path.join(work, 'server.log')
  log_file = open(log_path, 'wb')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  # The server starts on the empty base (as TF Serving, it waits for a version) while
  # the model is exported here: the two start-ups overlap.
  server = subprocess.Popen(server_cmd, cwd=common.REPO_DIR, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT)
  target = f'127.0.0.1:{grpc_port}'
  ledger = Ledger()
  stop = threading.Event()
  rss: List[Tuple[float, float, float]] = []      # (t, MiB, CPU %)
  errors: List[str] = []
  publisher = None
  try:
    if args.model_dir:
      export_dir = args.model_dir
      with open(common.CORPUS_PATH, encoding='utf-8') as f:
        corpus = f.read()
    else:
      export_dir, corpus = export_model(work, args.rnn_units, args.embedding_dim)
    publisher = Publisher(export_dir, base, staging)
    publisher.push(0.0)
    phase('model ready')
    wait_until_serving(server, target, log_path)
    phase('server serving')
    process = psutil.Process(server.pid)
    process.cpu_percent()
    t0 = time.monotonic()
    end = t0 + args.duration
    lines = [line for line in corpus.split('\n') if line.strip()]

    def snippet(rng, lo, hi):
      start = rng.randrange(len(corpus) - hi)
      return corpus[start:start + rng.randint(lo, hi)]

    def loop(body: Callable[[random.Random], None], seed: int):
      rng = random.Random(seed)
      def target_fn():
        while not stop.is_set() and time.monotonic() < end:
          try:
            body(rng)
          except Exception:  # pylint: disable=broad-except  (a bug here must show, not hang)
            errors.append(traceback.format_exc(limit=3))
          stop.wait(args.pause)
      return threading.Thread(target=target_fn, daemon=True)

    clients: List[Client] = []

    def new_client() -> Client:
      client = Client(target, MODEL, timeout=60, retries=args.retries, backoff=0.1,
                      max_backoff=2.0)
      clients.append(client)
      return client

    # ---- well-formed traffic
    def grpc_generate(client, kind='grpc generate'):
      def body(rng):
        batch, n = rng.randint(1, 4), rng.randint(20, 300)
        prompts = [rng.choice(lines)[:rng.randint(1, 40)] for _ in range(batch)]
        def call():
          texts = client.generate(prompts, n, 1.0, seed=rng.getrandbits(31))
          if len(texts) != batch or any(len(t) != n for t in texts):
            raise AssertionError(f'asked {batch} x {n} chars, got {[len(t) for t in texts]}')
        timed(ledger, kind, call)
      return body

    def grpc_score(client):
      def body(rng):
        texts = [snippet(rng, 20, 400) for _ in range(rng.randint(1, 4))]
        def call():
          scores = client.score(texts)
          for text, s in zip(texts, scores):
            if s.num_scored != len(text) - 1 or not math.isfinite(s.log_likelihood):
              raise AssertionError(f'bad score {s.num_scored}/{len(text)} {s.log_likelihood}')
        timed(ledger, 'grpc score', call)
      return body

    def grpc_stream(client):
      def body(rng):
        n = rng.randint(5, 20)
        def call():
          got = list(client.stream(rng.choice(lines)[:20] or 'A', n, 1.0))
          if len(got) != n:
            raise AssertionError(f'stream of {n} gave {len(got)}')
        timed(ledger, 'grpc stream (one_step)', call)
      return body

    def rest_generate(rest, kind='rest generate'):
      def body(rng):
        batch, n = rng.randint(1, 4), rng.randint(20, 300)
        def call():
          out = rest_json(rest, 'POST', PREDICT_PATH, {'signature_name': 'generate', 'inputs': {
              'prompt': [rng.choice(lines)[:30] for _ in range(batch)], 'num_chars': n,
              'temperature': 1.0, 'seed': rng.getrandbits(31)}})['outputs']
          texts = out['text'] if isinstance(out, dict) else out
          if len(texts) != batch or any(len(t) != n for t in texts):
            raise AssertionError(f'asked {batch} x {n} chars, got {[len(t) for t in texts]}')
        timed(ledger, kind, call)
      return body

    def rest_score(rest):
      def body(rng):
        texts = [snippet(rng, 20, 400) for _ in range(rng.randint(1, 4))]
        def call():
          rows = rest_json(rest, 'POST', PREDICT_PATH,
                           {'signature_name': 'score', 'instances': texts})['predictions']
          if [r['num_scored'] for r in rows] != [len(t) - 1 for t in texts]:
            raise AssertionError(f'bad scores {rows}')
        timed(ledger, 'rest score', call)
      return body

    def health(client, rest):
      def body(rng):
        def grpc_status():
          if not any(v.state == 'AVAILABLE' for v in client.status()):
            raise AssertionError('no version AVAILABLE')
        def rest_status():
          states = rest_json(rest, 'GET', f'/v1/models/{MODEL}')['model_version_status']
          if not any(s['state'] == 'AVAILABLE' for s in states):
            raise AssertionError(f'no version AVAILABLE: {states}')
        timed(ledger, 'grpc status', grpc_status)
        timed(ledger, 'rest status', rest_status)
        timed(ledger, 'rest metadata', lambda: rest_json(rest, 'GET',
                                                         f'/v1/models/{MODEL}/metadata'))
      return body

    # ---- hostile traffic
    cases = hostile_cases()
    hostile_channel = grpc.insecure_channel(target, options=[
        ('grpc.max_send_message_length', 64 << 20), ('grpc.max_receive_message_length', 64 << 20)])
    hostile_stub = prediction_service_pb2_grpc.PredictionServiceStub(hostile_channel)
    hostile_rest = Rest(rest_port, ledger, 'hostile', retries=0)
    counter = iter(range(10 ** 9))

    def hostile_once(transport, request):
      if transport == 'grpc':
        try:
          hostile_stub.Predict(request, timeout=60)
          return 'OK', ''
        except grpc.RpcError as e:
          return e.code().name, e.details() or ''
      if transport == 'rest':
        try:     # a fresh connection each: a server may close one after refusing a request
          got, data = hostile_rest.request(*request, timeout=60)
        except (OSError, http.client.HTTPException) as e:
          got, data = 0, f'{type(e).__name__}: {e}'.encode()
        hostile_rest.close()
        return got, data.decode('utf-8', 'replace')
      return _raw_http(rest_port, request)

    def hostile(rng):
      name, transport, request, expected = cases[next(counter) % len(cases)]
      for attempt in range(args.retries + 1):
        got, message = hostile_once(transport, request)
        # A busy server may refuse (admission, gRPC's concurrent-RPC cap) before it
        # looks at the request; ask again later, as a client would.
        if not _busy(got, message) or attempt == args.retries:
          break
        ledger.shed['hostile'] += 1
        time.sleep(min(2.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0))
      ledger.hostile_result(name, expected, got, message, _leaky(message, work))

    # ---- abandoned requests
    abandon_grpc = generate_request(prompts=['ROMEO:'] * 16, num_chars=args.abandon_chars,
                                    seed=7).SerializeToString()
    abandon_rest = json.dumps({'signature_name': 'generate', 'inputs': {
        'prompt': ['ROMEO:'] * 16, 'num_chars': args.abandon_chars, 'temperature': 1.0,
        'seed': 7}}).encode()
    abandon_stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))

    def cut_body():
      with socket.create_connection(('127.0.0.1', rest_port), timeout=10) as s:
        s.sendall(b'POST ' + PREDICT_PATH.encode() + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                  b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n'
                  + abandon_rest[:1000])
        time.sleep(0.3)
      ledger.abandoned['rest body cut off mid-way'] += 1

    def cancelled_grpc():
      future = abandon_stub.Predict.future(predict_pb2.PredictRequest.FromString(abandon_grpc),
                                           timeout=300)
      time.sleep(0.3)
      ledger.abandoned['grpc call cancelled' + (' (answered first)' if future.done() else '')] += 1
      future.cancel()

    abandon_modes = [
        lambda: killed_child(ledger, 'grpc client SIGKILLed mid-request',
                             [GRPC_CHILD, target, PREDICT_METHOD], abandon_grpc),
        lambda: killed_child(ledger, 'rest client SIGKILLed mid-request',
                             [REST_CHILD, str(rest_port), PREDICT_PATH], abandon_rest),
        cut_body, cancelled_grpc]
    abandon_counter = iter(range(10 ** 9))

    def abandon(rng):
      abandon_modes[next(abandon_counter) % len(abandon_modes)]()
      stop.wait(0.5)

    # ---- bursts: more well-formed requests at once than the server admits
    burst_client = new_client()
    burst_rests = [Rest(rest_port, ledger, 'burst', args.retries) for _ in range(args.burst_rest)]
    burst_pool = concurrent.futures.ThreadPoolExecutor(args.burst_grpc + args.burst_rest,
                                                       thread_name_prefix='burst')

    def burst(rng):
      stop.wait(args.burst_every)
      if stop.is_set() or time.monotonic() >= end:
        return
      jobs = [burst_pool.submit(grpc_generate(burst_client, 'grpc burst generate'),
                                random.Random(rng.getrandbits(32)))
              for _ in range(args.burst_grpc)]
      jobs += [burst_pool.submit(rest_generate(rest, 'rest burst generate'),
                                 random.Random(rng.getrandbits(32))) for rest in burst_rests]
      for job in jobs:
        job.result()

    threads = [loop(grpc_generate(new_client()), 10 + i)
               for i in range(args.grpc_generate_threads)]
    threads += [loop(grpc_score(new_client()), 20), loop(grpc_stream(new_client()), 30),
                loop(rest_generate(Rest(rest_port, ledger, 'rest generate', args.retries)), 40),
                loop(rest_score(Rest(rest_port, ledger, 'rest score', args.retries)), 50),
                loop(health(new_client(), Rest(rest_port, ledger, 'health', args.retries)), 60)]
    optional = {'burst': loop(burst, 90), 'hostile': loop(hostile, 70),
                'abandon': loop(abandon, 80)}
    threads += [thread for name, thread in optional.items() if name not in args.without]
    for thread in threads:
      thread.start()

    next_push = t0 + args.push_every
    next_print = t0 + 30
    while time.monotonic() < end:
      now = time.monotonic()
      if server.poll() is not None:
        errors.append(f'server exited with {server.returncode} at t={now - t0:.0f} s')
        break
      try:
        rss.append((round(now - t0, 1), process.memory_info().rss / 2 ** 20,
                    process.cpu_percent()))
      except psutil.Error:
        pass
      if now >= next_push and 'push' not in args.without:
        publisher.push(now - t0)
        next_push += args.push_every
      if now >= next_print:
        done = sum(len(v) for v in ledger.latencies.values())
        print(f't={now - t0:4.0f} s  requests ok {done}  failed {sum(ledger.failures.values())}'
              f'  RSS {rss[-1][1]:.0f} MiB  version {publisher.version}', file=sys.stderr,
              flush=True)
        next_print += 30
      time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    stop.set()
    phase('traffic over')
    for thread in threads:
      thread.join(timeout=120)
    phase('client threads done')
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
      errors.append(f'client threads still running 120 s after the end: {stuck}')
    traffic_seconds = time.monotonic() - t0

    # ---- after the traffic: the newest version serves, a normal request works
    alive = server.poll() is None
    final: Dict[str, Any] = {'server_alive_after_traffic': alive}
    if alive:
      with Client(target, MODEL, timeout=60, retries=4) as c:
        deadline = time.monotonic() + 60
        versions = []
        while time.monotonic() < deadline:
          versions = [v.version for v in c.status() if v.state == 'AVAILABLE']
          if publisher.version in versions:
            break
          time.sleep(0.5)
        final['available_versions'] = versions
        final['newest_pushed_serves'] = publisher.version in versions
        t = time.perf_counter()
        final['normal_generate_ok'] = len(c.generate('ROMEO:', 5, seed=1)[0]) == 5
        final['normal_generate_ms'] = round((time.perf_counter() - t) * 1e3, 1)
      final['rss_final_mib'] = round(process.memory_info().rss / 2 ** 20, 1)
    phase('final checks done')
    burst_pool.shutdown(wait=True)
    for client in clients:
      client.close()
    hostile_channel.close()
  finally:
    if server.poll() is None:
      server.send_signal(signal.SIGTERM)
      try:
        server.wait(60)
      except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log_file.close()
    phase('server stopped')
    with open(log_path, 'rb') as f:
      log_tail = f.read()[-4000:].decode('utf-8', 'replace')
    shutil.rmtree(work, ignore_errors=True)
  final['server_exit_code'] = server.returncode

  # ---- results
  def pct(values, q):
    return float(np.percentile(values, q)) * 1e3 if values else None
  kinds = sorted(set(ledger.latencies) | set(ledger.failures))
  rows = [{'kind': k, 'ok': len(ledger.latencies[k]), 'failed': ledger.failures[k],
           'p50_ms': pct(ledger.latencies[k], 50), 'p99_ms': pct(ledger.latencies[k], 99)}
          for k in kinds]
  hostile_rows = [{'case': name, **{k: (dict(v) if isinstance(v, collections.Counter) else v)
                                    for k, v in row.items()}}
                  for name, row in ledger.hostile.items()]
  after = [r for r in rss if r[0] >= warmup]
  second_half = [r for r in rss if r[0] >= traffic_seconds / 2]
  rss_after_warmup = after[0][1] if after else None
  rss_end = rss[-1][1] if rss else None
  memory = {
      'sample_every_s': 1, 'warmup_s': warmup,
      'rss_start_mib': round(rss[0][1], 1) if rss else None,
      'rss_after_warmup_mib': round(rss_after_warmup, 1) if after else None,
      'rss_end_mib': round(rss_end, 1) if rss else None,
      'rss_max_mib': round(max(r[1] for r in rss), 1) if rss else None,
      'growth_after_warmup_mib': round(rss_end - rss_after_warmup, 1) if after else None,
      'growth_after_warmup_pct': round(100 * (rss_end / rss_after_warmup - 1), 1)
                                 if after else None,
      'slope_after_warmup_mib_per_min': round(float(np.polyfit(
          [r[0] for r in after], [r[1] for r in after], 1)[0]) * 60, 2) if len(after) > 2 else None,
      # The second half: where a leak would still climb once caches and allocator
      # arenas have filled.
      'growth_second_half_mib': round(rss_end - second_half[0][1], 1) if second_half else None,
      'slope_second_half_mib_per_min': round(float(np.polyfit(
          [r[0] for r in second_half], [r[1] for r in second_half], 1)[0]) * 60, 2)
                                       if len(second_half) > 2 else None,
      'server_cpu_mean_pct': round(float(np.mean([r[2] for r in rss])), 1) if rss else None,
      # every 5th sample keeps the file small; enough to draw the curve
      'series_t_s_mib': [[r[0], round(r[1], 1)] for r in rss[::5]],
  }
  well_formed_failed = sum(ledger.failures.values())
  hostile_total = sum(r['count'] for r in ledger.hostile.values())
  hostile_refused = sum(r['refused_as_expected'] for r in ledger.hostile.values())
  summary = {
      'well_formed_ok': sum(len(v) for v in ledger.latencies.values()),
      'well_formed_failed': well_formed_failed,
      'hostile_sent': hostile_total, 'hostile_refused_as_expected': hostile_refused,
      'hostile_cases_all_as_expected': all(r['count'] == r['refused_as_expected']
                                           for r in ledger.hostile.values()),
      'hostile_leaky_messages': sum(r['leaky_messages'] for r in ledger.hostile.values()),
      'abandoned': sum(ledger.abandoned.values()),
      'versions_pushed': publisher.version,
      'grpc_client_retries': dict(sum((c.retry_counts for c in clients), collections.Counter())),
      'rest_shed_retries': dict(ledger.shed),
      'rest_keepalive_reconnects': dict(ledger.reconnects),
      'soak_errors': errors,
  }
  result = {
      'duration_s': args.duration, 'traffic_seconds': round(traffic_seconds, 1),
      'push_every_s': None if 'push' in args.without else args.push_every,
      'left_out': sorted(args.without),
      'model': ({'saved_model': args.model_dir} if args.model_dir else
                {'rnn_type': 'gru', 'rnn_units': args.rnn_units,
                 'embedding_dim': args.embedding_dim, 'weights': 'random (seed 0)',
                 'max_generate_chars': MAX_GENERATE_CHARS}),
      'server_command': ' '.join(server_cmd[1:]).replace(work, '<work>'),
      'summary': summary, 'final': final, 'requests': rows, 'hostile': hostile_rows,
      'abandoned': dict(ledger.abandoned), 'memory': memory,
      'failure_samples': ledger.failure_samples,
      'server_log_tail': log_tail.replace(work, '<work>') if (errors or well_formed_failed or
                                                              not final.get('normal_generate_ok'))
                         else '',
      'versions': common.versions('tensorflow', 'grpc', 'psutil'),
  }
  path = run.write(result, args.out)

  print(common.table(rows, ['kind', 'ok', 'failed', 'p50_ms', 'p99_ms'],
                     ['request kind', 'ok', 'failed', 'p50 ms', 'p99 ms']))
  print()
  print(common.table(hostile_rows, ['case', 'expected', 'count', 'refused_as_expected'],
                     ['hostile case', 'expected', 'sent', 'as expected']))
  print()
  print(common.table([{'what': k, 'count': v} for k, v in sorted(ledger.abandoned.items())],
                     ['what', 'count'], ['abandoned request', 'count']))
  print()
  def signed(v):
    return '-' if v is None else f'{v:+}'
  print(f'well-formed: {summary["well_formed_ok"]} ok, {well_formed_failed} failed; hostile: '
        f'{hostile_refused}/{hostile_total} refused as expected; versions pushed: '
        f'{publisher.version}; server RSS {memory["rss_after_warmup_mib"]} MiB after '
        f'{warmup:.0f} s warm-up -> {memory["rss_end_mib"]} MiB at the end '
        f'({signed(memory["growth_after_warmup_mib"])} MiB, slope '
        f'{memory["slope_after_warmup_mib_per_min"]} MiB/min; second half '
        f'{signed(memory["growth_second_half_mib"])} MiB); exit code '
        f'{final["server_exit_code"]}')
  for e in errors:
    print(f'soak error: {e}', file=sys.stderr)
  print(f'wrote {path}', file=sys.stderr)
  result['path'] = path
  return result


if __name__ == '__main__':
  main()
