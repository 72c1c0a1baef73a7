"""Version lifecycle under load, as TF Serving does it: swap, half-copied pushes, failures, policies.

The server polls only when a test calls `manager.poll()` (one explicit "tick" of
--file_system_poll_wait_seconds), so each test knows exactly when a swap
happened, and asserts on order, never on timing. One test runs the background
poller for real. Requests are real gRPC calls over loopback from many threads.
"""

import os
import shutil
import threading
import time

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.client import Client, NotFoundError, ServingError
from tests.test_serving_helpers import push, serve, tiny_version_dir


@pytest.fixture
def base(tmp_path):
  path = str(tmp_path / 'char_rnn')
  push(path, 1)
  return path


def _versions(server):
  return {s.version: (s.state, s.status.error_code)
          for s in server.manager.status(model_pb2.ModelSpec(name='char_rnn'))}


AVAILABLE, END = 30, 50


def test_hot_swap_under_8_busy_clients_drops_nothing_and_later_requests_get_the_new_version(base):
  with serve(base_path=base, grpc_port=0) as server:
    target = f'127.0.0.1:{server.grpc_port}'
    swapped = threading.Event()
    stop = threading.Event()
    records, errors = [], []
    lock = threading.Lock()

    def worker(i):
      with Client(target, timeout=60, retries=0) as c:
        n = 0
        while not stop.is_set() or n < 3:
          after_swap = swapped.is_set()
          try:
            version = c.predict('generate', {
                'prompt': ['ROMEO:'], 'num_chars': (200, tf.int32),
                'temperature': (1.0, tf.float32), 'seed': (i * 1000 + n, tf.int64)}).model_version
            with lock:
              records.append((after_swap, version))
          except ServingError as e:   # pragma: no cover - the assertion below reports it
            with lock:
              errors.append(e)
          n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
      t.start()
    _wait_until(lambda: len(records) >= 16)           # everyone is busy on version 1
    push(base, 2)                                     # the Pusher lands version 2
    server.manager.poll()                             # one poll: load 2, then unload 1
    swapped.set()
    _wait_until(lambda: sum(after for after, _ in records) >= 24)
    stop.set()
    for t in threads:
      t.join()

  assert errors == []
  before = [v for after, v in records if not after]
  after = [v for after, v in records if after]
  assert 1 in before                                  # served by 1 before the swap
  assert after and set(after) == {2}                  # every request sent after it: 2
  assert _versions(server) == {2: (AVAILABLE, 0), 1: (END, 0)}


def test_requests_in_flight_on_an_unloaded_version_finish_on_it(base):
  with serve(base_path=base) as server:
    held = server.manager.servable(model_pb2.ModelSpec(name='char_rnn'))
    push(base, 2)
    server.manager.poll()
    assert 1 not in server.manager._models['char_rnn'].servables
    # The handle a request took before the swap still runs (TF Serving's handles do too).
    out = held.function('generate')(prompt=tf.constant(['ROMEO:']), num_chars=tf.constant(5),
                                    temperature=tf.constant(1.0), seed=tf.constant(1, tf.int64))
    assert len(out['text'].numpy()[0].decode()) == 5


def test_a_half_copied_version_without_saved_model_pb_is_not_loaded(base):
  with serve(base_path=base) as server, Client(f'127.0.0.1:{server.grpc_port}') as c:
    partial = push(base, 2, with_saved_model_pb=False)   # variables/ copied, .pb not yet
    server.manager.poll()
    assert c.metadata().version == 1
    assert 2 not in _versions(server)
    with pytest.raises(NotFoundError):
      Client(f'127.0.0.1:{server.grpc_port}', version=2).metadata()
    # The Pusher's last copy lands: the next poll loads it.
    shutil.copy2(os.path.join(tiny_version_dir(), 'saved_model.pb'), partial)
    server.manager.poll()
    assert c.metadata().version == 2


def test_a_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving(base):
  with serve(base_path=base) as server, Client(f'127.0.0.1:{server.grpc_port}') as c:
    broken = os.path.join(base, '2')
    os.makedirs(broken)
    with open(os.path.join(broken, 'saved_model.pb'), 'wb') as f:
      f.write(b'this is not a SavedModel')
    server.manager.poll()
    server.manager.poll()                   # not retried while unchanged
    assert c.metadata().version == 1
    assert len(c.generate('ROMEO:', 5)[0]) == 5
    statuses = {s.version: s for s in c.status()}
    assert statuses[1].state == 'AVAILABLE'
    assert statuses[2].state == 'END' and statuses[2].error_code != 'OK'
    assert 'Loading servable: {name: char_rnn version: 2} failed' in statuses[2].error_message


def test_version_policies_all_latest_n_and_specific(tmp_path):
  base = str(tmp_path / 'char_rnn')
  for v in (1, 2, 3):
    push(base, v)
  os.makedirs(os.path.join(base, 'not-a-version'))
  def config(policy):
    return text_format.Parse(
        f'model_config_list {{ config {{ name: "char_rnn" base_path: "{base}" '
        f'model_version_policy {{ {policy} }} }} }}',
        model_server_config_pb2.ModelServerConfig())
  for policy, expected in [('all {}', {1, 2, 3}), ('latest { num_versions: 2 }', {2, 3}),
                           ('specific { versions: 1 versions: 3 versions: 9 }', {1, 3})]:
    with serve(config(policy), rest_port=None) as server:
      assert {v for v, (state, _) in _versions(server).items() if state == AVAILABLE} == expected
      with Client(f'127.0.0.1:{server.grpc_port}') as c:
        assert c.metadata().version == max(expected)   # no version asked: the latest


def test_deleting_the_newest_version_rolls_back_to_the_previous_one(base):
  with serve(base_path=base) as server, Client(f'127.0.0.1:{server.grpc_port}') as c:
    push(base, 2)
    server.manager.poll()
    assert _versions(server) == {2: (AVAILABLE, 0), 1: (END, 0)}
    shutil.rmtree(os.path.join(base, '2'))
    server.manager.poll()      # latest on disk is 1 again: load it, then unload 2
    assert _versions(server) == {2: (END, 0), 1: (AVAILABLE, 0)}
    assert c.metadata().version == 1


def test_the_background_poller_loads_a_new_push_without_being_asked(base):
  with serve(base_path=base, poll_seconds=0.2) as server, \
      Client(f'127.0.0.1:{server.grpc_port}') as c:
    assert c.metadata().version == 1
    push(base, 2)
    _wait_until(lambda: c.metadata().version == 2, timeout=60)


def test_8_clients_x_50_requests_of_every_signature_see_no_errors(base):
  with serve(base_path=base, rest_port=None) as server:
    target = f'127.0.0.1:{server.grpc_port}'
    errors, done = [], []

    def worker(i):
      with Client(target, timeout=60, retries=0) as c:
        for n in range(50):
          try:
            kind = (i + n) % 3
            if kind == 0:
              out = c.generate(['ROMEO:', 'JULIET:'], 20, seed=n)
              assert [len(t) for t in out] == [20, 20]
            elif kind == 1:
              assert c.score(['To be, or not to be'])[0].num_scored == 18
            else:
              assert len(next(iter(c.stream('ROMEO:', 1)))) == 1
            done.append(1)
          except (ServingError, AssertionError, grpc.RpcError) as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert errors == []
  assert len(done) == 400


# ------------------------------------------------------------------ helpers
def _wait_until(predicate, timeout=120.0):
  """Waits for a condition (a progress guard, not a timing assertion)."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError('condition not reached')
    time.sleep(0.02)


# ------------------------------------------------------------------ loading like TF Serving
def test_a_failed_load_is_retried_with_back_off_then_loads_once_the_files_are_whole(base):
  with serve(base_path=base, max_num_load_retries=3, load_retry_interval_micros=200_000) as server:
    version_dir = push(base, 2)
    variables = os.path.join(version_dir, 'variables')
    shutil.move(variables, variables + '.later')         # saved_model.pb without its variables
    server.manager.poll()
    state = server.manager._models['char_rnn'].states[2]
    assert (state.state, state.failures) == (END, 1)
    server.manager.poll()                                 # within the interval: no attempt
    assert server.manager._models['char_rnn'].states[2].failures == 1
    _wait_until(lambda: time.monotonic() >= server.manager._models['char_rnn'].states[2].retry_at)
    server.manager.poll()                                 # retried, still broken
    assert server.manager._models['char_rnn'].states[2].failures == 2
    assert _versions(server)[1] == (AVAILABLE, 0)         # version 1 served all along
    shutil.move(variables + '.later', variables)          # the files are whole now
    _wait_until(lambda: time.monotonic() >= server.manager._models['char_rnn'].states[2].retry_at)
    server.manager.poll()
    assert _versions(server) == {2: (AVAILABLE, 0), 1: (END, 0)}


def test_after_max_num_load_retries_a_version_waits_for_a_new_copy(base):
  with serve(base_path=base, max_num_load_retries=1, load_retry_interval_micros=1000) as server:
    broken = os.path.join(base, '2')
    os.makedirs(broken)
    with open(os.path.join(broken, 'saved_model.pb'), 'wb') as f:
      f.write(b'not a SavedModel')
    for _ in range(4):
      server.manager.poll()
      time.sleep(0.01)
    state = server.manager._models['char_rnn'].states[2]
    assert state.failures == 2                            # the first try + 1 retry
    assert 'failed: ' in state.error_message and base not in state.error_message
    os.remove(os.path.join(broken, 'saved_model.pb'))     # a new, whole copy lands
    shutil.rmtree(broken)
    push(base, 2)
    server.manager.poll()
    assert _versions(server)[2] == (AVAILABLE, 0)


def test_version_dirs_not_plain_ascii_digits_are_ignored_with_one_log_line(base, caplog):
  for name in ('²', '٣', '1.tmp', 'latest', '99999999999999999999'):
    os.makedirs(os.path.join(base, name))
    shutil.copy2(os.path.join(tiny_version_dir(), 'saved_model.pb'), os.path.join(base, name))
  with caplog.at_level('INFO', logger='serving'):
    with serve(base_path=base) as server:
      server.manager.poll()
      server.manager.poll()
      assert _versions(server) == {1: (AVAILABLE, 0)}
  for name in ('²', '٣', '1.tmp', 'latest', '99999999999999999999'):
    lines = [r for r in caplog.records if r.getMessage().startswith(f'Ignoring {name!r}')]
    assert len(lines) == 1, (name, [r.getMessage() for r in caplog.records][-10:])


def test_a_half_copied_or_broken_version_never_blocks_a_newer_one(base):
  with serve(base_path=base) as server, Client(f'127.0.0.1:{server.grpc_port}') as c:
    push(base, 3, with_saved_model_pb=False)              # half-copied
    broken = os.path.join(base, '4')
    os.makedirs(broken)
    with open(os.path.join(broken, 'saved_model.pb'), 'wb') as f:
      f.write(b'garbage')
    server.manager.poll()
    assert c.metadata().version == 1                      # 4 failed, 3 is not there yet
    push(base, 5)
    server.manager.poll()
    assert c.metadata().version == 5
    assert 3 not in _versions(server)
