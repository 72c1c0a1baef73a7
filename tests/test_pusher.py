"""components.pusher: a version appears only when complete; a killed push breaks nothing.

Real SavedModels (the project's export), a real push into a real directory,
real kills: a push cut off after every file of its copy (the files copied so
far, and the file being copied truncated), and a subprocess running the pusher
killed with SIGKILL mid-copy. After each, what the next pipeline run reads
(ServedModel, through which warm start and the gate's baseline go) and the
server (serving.models.ModelManager polling the base directory) must behave:
never take a half version, never crash, and still load a newer complete one.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import pusher, served_model
from components.model import build_keras_model, export_serving_model
from components.text import CharVocab
from serving import models as serving_models
from tests.conftest import REPO_DIR

VOCAB = CharVocab.from_text('abcdefghij \n')
CFG = dict(embedding_dim=8, rnn_type='gru', rnn_units=16, num_layers=1, dropout=0.0)


def _export(directory, seed):
  tf.keras.utils.set_random_seed(seed)
  model = build_keras_model(len(VOCAB), **CFG)
  export_serving_model(model, VOCAB.tokens, CFG, 100, str(directory))
  os.makedirs(os.path.join(directory, 'assets.extra'), exist_ok=True)
  with open(os.path.join(directory, 'assets.extra', 'metrics.json'), 'w') as f:
    json.dump({'seed': seed}, f)
  return str(directory)


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('pusher_models')
  return [_export(tmp / f'm{seed}', seed) for seed in (1, 2)]


def _seed_of(version_dir):
  with open(os.path.join(version_dir, 'assets.extra', 'metrics.json')) as f:
    return json.load(f)['seed']


def _served_model_run(base, out):
  """ServedModel's executor, as the next pipeline run would run it."""
  artifact = standard_artifacts.Model()
  artifact.uri = str(out)
  os.makedirs(artifact.uri, exist_ok=True)
  served_model.Executor().Do({}, {'model': [artifact]}, {'serving_model_dir': str(base)})
  return artifact


class _Server:
  """serving.models.ModelManager over `base`, as serving.server polls it."""

  def __init__(self, base):
    self.manager = serving_models.ModelManager(
        serving_models.single_model_config('char_rnn', str(base)), max_num_load_retries=0)

  def served_version(self):
    self.manager.poll()
    servable = self.manager.servable(model_pb2.ModelSpec(name='char_rnn'))
    out = servable.function('generate')(prompt=tf.constant(['ab']), num_chars=tf.constant(5),
                                        temperature=tf.constant(1.0),
                                        seed=tf.constant(1, tf.int64))
    assert len(out['text'].numpy()[0].decode()) == 5
    return servable.version


def test_push_writes_a_complete_version_through_a_temporary_sibling(tmp_path, exports):
  base = tmp_path / 'char_rnn'
  seen = []

  def watch(rel):
    # While the copy runs, no version directory exists yet.
    seen.append((rel, sorted(os.listdir(base))))

  version, path = pusher.push(exports[0], str(base), on_file_copied=watch)
  assert path == os.path.join(base, str(version)) and os.listdir(base) == [str(version)]
  plan = pusher.copy_plan(exports[0])
  assert plan[-1] == 'saved_model.pb' and 'variables/variables.index' in plan
  assert [rel for rel, _ in seen] == plan
  for _, listing in seen:
    assert len(listing) == 1 and listing[0].startswith(pusher.TMP_PREFIX), listing
    assert not pusher.is_version_name(listing[0])
  assert sorted(pusher.copy_plan(path)) == sorted(plan)
  for rel in plan:
    with open(os.path.join(exports[0], rel), 'rb') as a, open(os.path.join(path, rel), 'rb') as b:
      assert a.read() == b.read(), rel
  assert pusher.incomplete_reason(path) is None
  # The next push is a newer version even within the same second.
  version2, _ = pusher.push(exports[1], str(base))
  assert version2 > version
  assert pusher.latest_complete_version(str(base)) == os.path.join(base, str(version2))


def _half_copy(src, dst, plan, k, truncate):
  """What a push killed at file k leaves: files [0, k) whole, file k cut in half."""
  os.makedirs(dst, exist_ok=True)
  for rel in plan[:k]:
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    shutil.copyfile(os.path.join(src, rel), os.path.join(dst, rel))
  if truncate:
    os.makedirs(os.path.dirname(os.path.join(dst, plan[k])), exist_ok=True)
    with open(os.path.join(src, plan[k]), 'rb') as f:
      data = f.read()
    with open(os.path.join(dst, plan[k]), 'wb') as f:
      f.write(data[:len(data) // 2])


def test_a_push_killed_at_any_file_leaves_nothing_that_is_served(tmp_path, exports, caplog):
  base = tmp_path / 'char_rnn'
  v1, v1_dir = pusher.push(exports[0], str(base))
  plan = pusher.copy_plan(exports[1])
  server = _Server(base)
  assert server.served_version() == v1
  fingerprint = served_model.served_fingerprint(str(base))
  for k in range(len(plan)):
    for truncate in (False, True):
      # Our push: killed inside its temporary directory.
      tmp = base / f'{pusher.TMP_PREFIX}{v1 + 1}-{k}-{int(truncate)}'
      _half_copy(exports[1], tmp, plan, k, truncate)
      assert pusher.latest_complete_version(str(base)) == v1_dir
      assert served_model.served_fingerprint(str(base)) == fingerprint
      assert server.served_version() == v1
      shutil.rmtree(tmp)
      # TFX's push (in place, saved_model.pb last) killed at the same point: a
      # numeric directory that is not a model. Skipped with a reason, not loaded.
      half = base / str(v1 + 1)
      _half_copy(exports[1], half, plan, k, truncate)
      with caplog.at_level(logging.WARNING, logger='absl'):
        caplog.clear()
        assert pusher.latest_complete_version(str(base)) == v1_dir, (k, truncate)
      assert f'skipping version {half}' in caplog.text
      snapshot = _served_model_run(base, tmp_path / f'served-{k}-{int(truncate)}')
      assert snapshot.get_int_custom_property('served_version') == v1
      assert _seed_of(os.path.join(snapshot.uri, 'Format-Serving')) == 1
      assert server.served_version() == v1    # a truncated saved_model.pb fails to load
      shutil.rmtree(half)
  # A complete newer version still loads, everywhere.
  v2, v2_dir = pusher.push(exports[1], str(base))
  assert pusher.latest_complete_version(str(base)) == v2_dir
  assert server.served_version() == v2
  snapshot = _served_model_run(base, tmp_path / 'served-final')
  assert snapshot.get_int_custom_property('served_version') == v2


def test_the_next_push_removes_what_a_killed_push_left(tmp_path, exports):
  base = tmp_path / 'char_rnn'
  plan = pusher.copy_plan(exports[0])
  dead = base / f'{pusher.TMP_PREFIX}123-{pusher.socket.gethostname()}-999999999-abcd'
  _half_copy(exports[0], dead, plan, len(plan) - 1, True)
  # A push still running on this host (our parent process stands in) is left alone.
  alive = base / f'{pusher.TMP_PREFIX}124-{pusher.socket.gethostname()}-{os.getppid()}-abcd'
  alive.mkdir()
  version, _ = pusher.push(exports[0], str(base))
  assert sorted(os.listdir(base)) == sorted([str(version), alive.name])


_KILLABLE_PUSH = '''
import sys, time
from components import pusher
def progress(rel):
  print(rel, flush=True)
  time.sleep(0.3)
pusher.push(sys.argv[1], sys.argv[2], on_file_copied=progress)
print('DONE', flush=True)
'''


SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')
_slow = pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: ~20 s per kill point '
                                            '(a fresh Python with TensorFlow)')


@pytest.mark.parametrize('kill_after', [pytest.param(1, marks=_slow), 3,
                                        pytest.param(-1, marks=_slow)])
def test_a_real_sigkill_mid_push_then_the_next_run_and_the_server_behave(
    tmp_path, exports, kill_after):
  base = tmp_path / 'char_rnn'
  v1, v1_dir = pusher.push(exports[0], str(base))
  plan = pusher.copy_plan(exports[1])
  kill_after = kill_after % len(plan)        # -1: after the last file, before the rename
  proc = subprocess.Popen([sys.executable, '-c', _KILLABLE_PUSH, exports[1], str(base)],
                          cwd=REPO_DIR, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  try:
    copied = []
    while len(copied) <= kill_after:
      line = proc.stdout.readline()
      assert line, 'the pusher exited before it was killed'
      copied.append(line.strip())
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
  finally:
    if proc.poll() is None:
      proc.kill()
  assert copied == plan[:kill_after + 1]
  leftovers = [n for n in os.listdir(base) if n != str(v1)]
  assert len(leftovers) == 1 and leftovers[0].startswith(pusher.TMP_PREFIX), leftovers
  assert pusher.latest_complete_version(str(base)) == v1_dir
  assert _Server(base).served_version() == v1
  snapshot = _served_model_run(base, tmp_path / 'served')
  assert snapshot.get_int_custom_property('served_version') == v1
  # The same push again: completes, and cleans up after the killed one.
  v2, v2_dir = pusher.push(exports[1], str(base))
  assert sorted(os.listdir(base)) == sorted([str(v1), str(v2)])
  assert _seed_of(v2_dir) == 2 and _Server(base).served_version() == v2


def test_version_names_are_ascii_digits_only(tmp_path, exports, caplog):
  base = tmp_path / 'char_rnn'
  v1, v1_dir = pusher.push(exports[0], str(base))
  for name in ('²', '١٢', '99999999999.tmp', 'latest'):
    shutil.copytree(exports[1], base / name)
  with caplog.at_level(logging.WARNING, logger='absl'):
    assert pusher.latest_complete_version(str(base)) == v1_dir
  for name in ('²', '١٢', 'latest'):
    assert repr(name) in caplog.text
  assert served_model.served_fingerprint(str(base)) != served_model.NOTHING_SERVED
  snapshot = _served_model_run(base, tmp_path / 'served')
  assert snapshot.get_int_custom_property('served_version') == v1


def test_incomplete_reason_names_what_is_wrong(tmp_path, exports):
  model = tmp_path / 'm'
  shutil.copytree(exports[0], model)
  assert pusher.incomplete_reason(str(model)) is None
  data = next(p for p in pusher.copy_plan(str(model)) if 'variables.data' in p)
  with open(model / data, 'r+b') as f:
    f.seek(10)
    byte = f.read(1)
    f.seek(10)
    f.write(bytes([byte[0] ^ 0xFF]))     # one flipped byte: the tensor's CRC fails
  assert 'variables do not read back' in pusher.incomplete_reason(str(model))
  os.remove(model / 'saved_model.pb')
  assert pusher.incomplete_reason(str(model)) == 'no saved_model.pb'


def test_executor_pushes_a_blessed_model_with_tfx_pushers_properties(tmp_path, exports):
  model = standard_artifacts.Model()
  model.uri = str(tmp_path / 'model')
  shutil.copytree(exports[0], tmp_path / 'model' / 'Format-Serving')
  base = tmp_path / 'serving' / 'char_rnn'
  destination = proto_utils.proto_to_json(pusher_pb2.PushDestination(
      filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base))))

  def run(blessed, name):
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / f'blessing-{name}')
    blessing.set_int_custom_property('blessed', int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / f'pushed-{name}')
    os.makedirs(pushed.uri)
    pusher.Executor().Do({'model': [model], 'model_blessing': [blessing]},
                         {'pushed_model': [pushed]}, {'push_destination': destination})
    return pushed

  refused = run(False, 'no')
  assert refused.get_int_custom_property('pushed') == 0 and not os.path.exists(base)
  pushed = run(True, 'yes')
  assert pushed.get_int_custom_property('pushed') == 1
  version = pushed.get_string_custom_property('pushed_version')
  assert pushed.get_string_custom_property('pushed_destination') == os.path.join(base, version)
  assert os.listdir(base) == [version]
  # TFX's archive copy in the artifact itself.
  assert os.path.exists(os.path.join(pushed.uri, 'saved_model.pb'))
  loaded = tf.saved_model.load(os.path.join(base, version))
  assert 'generate' in loaded.signatures
  np.testing.assert_array_equal(
      tf.train.load_checkpoint(os.path.join(base, version, 'variables', 'variables'))
      .get_variable_to_shape_map().keys(),
      tf.train.load_checkpoint(os.path.join(exports[0], 'variables', 'variables'))
      .get_variable_to_shape_map().keys())


def test_a_url_destination_is_written_in_place_with_saved_model_pb_last(tmp_path, exports):
  """Object stores (gs://) have no rename: each object appears whole, the graph last.

  `file://` takes the same branch (any scheme but a plain path), on this machine.
  """
  base = 'file://' + str(tmp_path / 'char_rnn')
  seen = []

  def watch(rel):
    has_pb = [os.path.exists(tmp_path / 'char_rnn' / d / 'saved_model.pb')
              for d in os.listdir(tmp_path / 'char_rnn')]
    seen.append((rel, any(has_pb)))

  version, path = pusher.push(exports[0], base, on_file_copied=watch)
  assert path == f'{base}/{version}'
  assert [rel for rel, _ in seen] == pusher.copy_plan(exports[0])
  # Until the last file, the version had no saved_model.pb: not a model to anyone.
  assert [has_pb for _, has_pb in seen] == [False] * (len(seen) - 1) + [True]
  assert pusher.latest_complete_version(base) == path
  assert pusher.incomplete_reason(str(tmp_path / 'char_rnn' / str(version))) is None
