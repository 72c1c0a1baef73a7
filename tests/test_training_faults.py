"""Training under faults: divergence, kills, the time budget, progress and history.

The callbacks are tested on real (tiny) Keras models; a clock is injected where
time matters (it is the monitor's own time source). Divergence goes through the
real pipeline; a kill goes through the real run_fn in a subprocess killed with
SIGKILL (and, with CHAR_RNN_SLOW_TESTS=1, through the whole pipeline).
"""

import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import examples_format, training
from components.training_config import TrainingConfig
from pipeline import configs
from tests import worker_cluster
from tests.conftest import REPO_DIR, run_local_pipeline

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS') == '1'


class FakeTime:
  """A clock the test moves by hand."""

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def _model(vocab=8, units=4):
  model = keras.Sequential([keras.Input((None,), dtype='int32'),
                            keras.layers.Embedding(vocab, 4), keras.layers.GRU(units, return_sequences=True),
                            keras.layers.Dense(vocab)])
  model.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def _data(n=64, length=6, vocab=8):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (n, length + 1)).astype('int32')
  return ids[:, :-1], ids[:, 1:]


def _monitor(clock, budget_seconds=None, epochs=1, steps_per_epoch=8, **kwargs):
  state = training.TrainingState(seed=0)
  budget = training.Budget(budget_seconds, clock, eval_batches=2, sample=False)
  kwargs.setdefault('divergence_ceiling', 100 * np.log(8))
  return training.TrainingMonitor(state, clock, budget, learning_rate=1e-2,
                                  lr_schedule='constant', min_lr_ratio=0.1,
                                  steps_per_epoch=steps_per_epoch, epochs=epochs, **kwargs)


# ---------------------------------------------------------------- divergence
class _PoisonWeights(keras.callbacks.Callback):
  """Writes NaN into the first weight after `after` steps: the next loss is NaN."""

  def __init__(self, after):
    super().__init__()
    self._after, self._seen = after, 0

  def on_train_batch_end(self, batch, logs=None):
    self._seen += 1
    if self._seen == self._after:
      w = self.model.weights[0]
      w.assign(tf.fill(w.shape, float('nan')))


def test_a_nan_loss_stops_training_with_the_step_and_what_to_do():
  model = _model()
  x, y = _data()
  monitor = _monitor(training.Clock())
  with pytest.raises(training.TrainingDivergedError,
                     match=r'training diverged at step 4 \(epoch 1\): loss is nan; lower '
                           r'learning_rate \(now 0.01\) or set clipnorm'):
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[_PoisonWeights(3), monitor], verbose=0)
  assert monitor.state.step == 4 and monitor.state.stop_reason == 'diverged'


def test_divergence_covers_nan_inf_and_losses_far_above_a_uniform_guess():
  ceiling = 100 * np.log(66)
  assert training.divergence(float('nan'), ceiling) == 'nan'
  assert training.divergence(float('inf'), ceiling) == 'inf'
  assert training.divergence(2.5e8, ceiling).startswith('2.5e+08, above the divergence ceiling')
  assert training.divergence(ceiling, ceiling) is None
  assert training.divergence(4.2, ceiling) is None


def _copy_run(tiny_pipeline, target):
  """A copy of the fixture's output dir: cached ingest and windows, its served version."""
  shutil.copytree(tiny_pipeline.output_dir, target)
  return target


def _versions(output_dir):
  base = os.path.join(configs.serving_model_dir(output_dir), configs.SERVING_MODEL_NAME)
  return sorted(d for d in os.listdir(base) if d.isdigit())


def test_a_diverging_run_fails_the_trainer_and_pushes_nothing(tiny_pipeline, corpus_path,
                                                              tmp_path):
  output_dir = _copy_run(tiny_pipeline, str(tmp_path / 'run'))
  before = _versions(output_dir)
  assert before, 'the fixture pushed a version'
  served = os.path.join(configs.serving_model_dir(output_dir), configs.SERVING_MODEL_NAME,
                        before[-1], 'saved_model.pb')
  with open(served, 'rb') as f:
    served_bytes = f.read()
  exported_before = _exported(configs.pipeline_root(output_dir))
  with pytest.raises(Exception) as raised:
    run_local_pipeline(output_dir, [corpus_path], 'tiny', 'learning_rate=1e7')
  message = str(raised.value)
  assert 'TrainingDivergedError' in repr(raised.value) or 'training diverged' in message
  assert 'training diverged at step' in message and 'lower learning_rate (now 1e+07)' in message
  assert 'OverflowError' not in message
  assert _versions(output_dir) == before
  with open(served, 'rb') as f:
    assert f.read() == served_bytes
  # Nothing exported (TFX removes a failed execution's outputs; none had a
  # SavedModel), and no backup left to resume into: the same settings diverge again.
  root = configs.pipeline_root(output_dir)
  assert _exported(root) == exported_before
  assert not glob.glob(os.path.join(root, 'CharRnnTrainer', '.backup', '*', 'step-*'))


def _exported(pipeline_root):
  return sorted(glob.glob(os.path.join(pipeline_root, 'CharRnnTrainer', 'model', '*',
                                       'Format-Serving', 'saved_model.pb')))


# -------------------------------------------------------------------- budget
def test_budget_reserves_the_last_validation_sample_and_export():
  fake = FakeTime()
  clock = training.Clock(now=fake)
  budget = training.Budget(100.0, clock, eval_batches=10)
  assert not budget.exhausted()
  budget.record_step(1.0)
  # Unmeasured validation: half a step per eval batch; export: the floor.
  assert budget.reserve() == pytest.approx(0.5 * 10 * 1.0 + training.EXPORT_SECONDS_FLOOR)
  fake.t += 88.9
  assert not budget.exhausted()                 # 88.9 + 1 + 10 <= 100
  fake.t += 0.2
  assert budget.exhausted()
  budget.record_eval(3.0)
  budget.record_sample(4.0)                     # the first sample: the export is ~1.5x it
  assert budget.reserve() == pytest.approx(3.0 + 4.0 + 1.5 * 4.0)
  assert budget.left() == pytest.approx(100 - 89.1)
  clock.spent_before = 50.0                     # a resumed run carries what it spent
  assert budget.left() == pytest.approx(100 - 139.1)
  assert not training.Budget(None, clock, 10).exhausted()
  # Before anything is measured, the first step (mostly tracing) stands in for
  # the traces a first validation, sample and export need.
  early = training.Budget(100.0, clock, eval_batches=10)
  early.record_first_step(4.0)
  early.record_step(0.2)
  assert early.reserve() == pytest.approx((4.0 + 0.5 * 10 * 0.2) + 4.0 + 1.5 * 4.0)


class _Tick(keras.callbacks.Callback):
  """Each training step takes `seconds` of the fake clock."""

  def __init__(self, fake, seconds):
    super().__init__()
    self._fake, self._seconds = fake, seconds

  def on_train_batch_end(self, batch, logs=None):   # before the monitor's
    self._fake.t += self._seconds


def test_the_budget_stops_training_so_that_the_final_work_fits():
  fake = FakeTime()
  clock = training.Clock(now=fake)
  monitor = _monitor(clock, budget_seconds=30.0, epochs=10, steps_per_epoch=100)
  model = _model()
  x, y = _data(n=800)
  model.fit(x, y, batch_size=8, epochs=10, callbacks=[_Tick(fake, 1.0), monitor], verbose=0)
  # One step is 1 s (the first, standing for a trace, too); unmeasured
  # validation: a trace + 2 batches at half a step = 2 s; export max(5, 1.5 x 1) s:
  # after step k, k + 1 + 7 > 30 first holds at k = 23.
  assert monitor.state.step == 23
  assert monitor.state.stop_reason == 'time_budget'
  assert len(monitor.state.epochs) == 1 and monitor.state.epochs[0]['epoch'] == 1
  assert clock.elapsed() + monitor.budget.reserve() <= 30.0 + 1e-9


def test_cosine_schedule_anneals_over_the_usable_budget_and_resumes_in_place():
  fake = FakeTime()
  clock = training.Clock(now=fake)
  monitor = _monitor(clock, budget_seconds=100.0, epochs=1, steps_per_epoch=1000)
  monitor._schedule, monitor._min_ratio = 'cosine', 0.1   # pylint: disable=protected-access
  assert monitor.current_lr() == pytest.approx(1e-2)
  fake.t += (100 - training.EXPORT_SECONDS_FLOOR) / 2     # half the usable time
  assert monitor.current_lr() == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))
  fake.t += 1000
  assert monitor.current_lr() == pytest.approx(1e-3)
  # Steps progress counts too: 500 of 1000 steps is half way.
  resumed = _monitor(training.Clock(now=FakeTime()), epochs=1, steps_per_epoch=1000)
  resumed._schedule, resumed._min_ratio = 'cosine', 0.1   # pylint: disable=protected-access
  resumed.state.step = 500
  assert resumed.current_lr() == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))


# ----------------------------------------------------------- history, progress
def test_history_keeps_a_few_hundred_points_of_mean_losses():
  state = training.TrainingState(seed=0)
  for step in range(1, 5001):
    state.step = step
    state.add_step_point(float(step), 0.1, step / 10)
  assert 100 < len(state.steps) < training.MAX_HISTORY_POINTS
  steps = [p['step'] for p in state.steps]
  assert steps == sorted(steps) and steps[-1] <= 5000
  every = state.record_every
  assert every & (every - 1) == 0                          # a power of two
  # Each point is the mean loss of the steps it covers (loss == step here).
  last = state.steps[-1]
  assert last['loss'] == pytest.approx(last['step'] - (every - 1) / 2)
  assert set(last) == {'step', 'epoch', 'loss', 'learning_rate', 'elapsed_seconds'}


def test_progress_is_one_updating_line_on_a_terminal_and_log_lines_otherwise():
  stream = io.StringIO()
  progress = training.Progress(30.0, total_steps=100, epochs=2, stream=stream, is_tty=True)
  progress.step(0.0, 10, 0, 2.5, 1e-3, 12.0, 288.0)
  progress.step(0.1, 11, 0, 2.4, 1e-3, 12.1, 287.9)     # too soon: no redraw
  progress.step(1.0, 12, 0, 2.3, 1e-3, 13.0, 287.0)
  progress.close()
  text = stream.getvalue()
  assert text.count('\r') == 2 and text.endswith('\n')
  assert 'step 12/100  epoch 1/2  loss 2.3000  lr 0.001  13 s elapsed  287 s of budget left' in text

  stream, lines = io.StringIO(), []
  progress = training.Progress(30.0, total_steps=100, epochs=2, stream=stream, is_tty=False,
                               log=lines.append)
  for second in range(0, 100, 10):
    progress.step(float(second), second, 1, 2.0, 1e-3, float(second), None)
  progress.message('epoch 2/2: ...')
  assert lines[-1] == 'epoch 2/2: ...'
  lines = lines[:-1]
  assert len(lines) == 4                                  # every 30 s: at 0, 30, 60, 90
  assert lines[1] == 'step 30/100  epoch 2/2  loss 2.0000  lr 0.001  30 s elapsed  no time budget'
  assert stream.getvalue() == ''


# ------------------------------------------------------------------ backups
def test_backups_are_atomic_and_a_broken_newest_falls_back_to_the_previous(tmp_path):
  x, y = _data()
  model = _model()
  store = training.BackupStore(str(tmp_path / 'backup'))
  model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=3, verbose=0)
  state = training.TrainingState(seed=5, step=3, batch_in_epoch=3, elapsed_seconds=7.0)
  first = store.save(model, state)
  weights_at_3 = [w.numpy() for w in model.weights]
  optimizer_at_3 = [v.numpy() for v in model.optimizer.variables]
  kept = str(tmp_path / 'kept')
  shutil.copytree(first, kept)
  model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=3, verbose=0)
  second = store.save(model, training.TrainingState(seed=5, step=6))
  assert sorted(os.listdir(store.directory)) == ['step-000000006']   # older ones go
  # A kill mid-write leaves a temporary directory, never a step-* one.
  os.makedirs(os.path.join(store.directory, 'step-000000009.tmp-1-2'))
  shutil.copytree(kept, first)
  with open(os.path.join(second, store.WEIGHTS), 'r+b') as f:   # the newest is broken
    f.truncate(100)

  fresh = _model()
  fresh.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=1, verbose=0)   # other weights
  restored_state, best = store.restore(fresh)
  assert restored_state == state and best is None
  for a, b in zip(fresh.weights, weights_at_3):
    np.testing.assert_array_equal(a.numpy(), b)
  # The optimizer's state (Adam moments, step count) comes back with the weights.
  assert int(fresh.optimizer.iterations.numpy()) == 3
  for a, b in zip(fresh.optimizer.variables, optimizer_at_3):
    np.testing.assert_array_equal(a.numpy(), b)
  store.delete()
  assert not os.path.exists(store.directory)
  assert store.restore(fresh) is None


def _custom_loop_model():
  """A model trained by its own loop (as the multi-worker path does): no compiled optimizer."""
  model = keras.Sequential([keras.Input((None,), dtype='int32'), keras.layers.Embedding(8, 4),
                            keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(8)])
  optimizer = keras.optimizers.Adam(1e-2)
  optimizer.build(model.trainable_variables)
  return model, optimizer


def _custom_steps(model, optimizer, steps):
  x, y = _data()
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  for _ in range(steps):
    with tf.GradientTape() as tape:
      value = loss(y, model(x))
    optimizer.apply_gradients(zip(tape.gradient(value, model.trainable_variables),
                                  model.trainable_variables))


def test_a_custom_loops_optimizer_is_backed_up_beside_the_weights_and_restored(tmp_path):
  model, optimizer = _custom_loop_model()
  _custom_steps(model, optimizer, 2)
  store = training.BackupStore(str(tmp_path / 'backup'))
  path = store.save(model, training.TrainingState(seed=1, step=2), optimizer=optimizer)
  assert sorted(os.listdir(path)) == ['model.weights.h5', 'optimizer.npz', 'state.json']
  saved = [v.numpy() for v in optimizer.variables]

  fresh, fresh_optimizer = _custom_loop_model()
  state, best = store.restore(fresh, fresh_optimizer)
  assert state.step == 2 and best is None
  assert int(fresh_optimizer.iterations.numpy()) == 2
  for a, b in zip(fresh_optimizer.variables, saved):
    np.testing.assert_array_equal(a.numpy(), b)
  # The same next step as the model that was backed up.
  _custom_steps(model, optimizer, 1)
  _custom_steps(fresh, fresh_optimizer, 1)
  for a, b in zip(fresh.weights, model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())

  # Only the backup asked for (the multi-worker chief's choice), and only a whole one.
  assert store.restore(fresh, fresh_optimizer, step=3) is None
  assert store.restore(fresh, fresh_optimizer, step=2)[0].step == 2
  other = keras.optimizers.SGD(1e-2)                   # not the optimizer backed up
  other.build(fresh.trainable_variables)
  assert store.restore(fresh, other) is None
  os.remove(os.path.join(path, store.OPTIMIZER))
  assert store.restore(fresh, fresh_optimizer) is None


# ------------------------------------------------------------------- resume
def _artifacts(tiny_pipeline):
  root = tiny_pipeline.pipeline_root
  [examples] = glob.glob(os.path.join(root, 'WindowGen', 'examples', '*'))[:1]
  [vocabulary] = glob.glob(os.path.join(root, 'VocabularyGen', 'vocabulary', '*'))[:1]
  return examples, vocabulary


_RUN_FN = '''
import json, sys
from tfx.components.trainer.fn_args_utils import FnArgs
from components import trainer_module
a = json.loads(sys.argv[1])
trainer_module.run_fn(FnArgs(train_files=[a["train"]], eval_files=[a["eval"]],
                             serving_model_dir=a["serving"], model_run_dir=a["run"],
                             custom_config=a["config"], base_model=None))
'''


def _run_fn_args(tiny_pipeline, workdir, backup_dir, overrides):
  examples, vocabulary = _artifacts(tiny_pipeline)
  config = configs.get_preset('tiny', overrides).training_config()
  config.update(vocabulary_uri=vocabulary, backup_dir=backup_dir)
  return {'train': examples_format.split_pattern(examples, 'train'),
          'eval': examples_format.split_pattern(examples, 'eval'),
          'serving': os.path.join(workdir, 'model', 'Format-Serving'),
          'run': os.path.join(workdir, 'model_run'), 'config': config}


def _start(command, log_path, **env):
  """A subprocess whose output goes to a file (a full pipe would block it)."""
  env = dict(os.environ, PYTHONPATH=REPO_DIR, TF_CPP_MIN_LOG_LEVEL='2', **env)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'ab') as log:
    proc = subprocess.Popen(command, cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
  proc.log_path = log_path
  return proc


def _tail(proc):
  with open(proc.log_path, errors='replace') as f:
    return f.read()[-3000:]


def _start_run_fn(args):
  return _start([sys.executable, '-c', _RUN_FN, json.dumps(args)],
                os.path.join(os.path.dirname(args['run']), 'run_fn.log'))


def _metrics(args):
  with open(os.path.join(args['serving'], 'assets.extra', 'metrics.json')) as f:
    return json.load(f)


def _kill_at_backup(proc, backup_dir, min_step, timeout=300):
  """SIGKILLs `proc` as soon as a complete backup at step >= min_step exists; its step."""
  step = worker_cluster.kill_at_backup([proc], backup_dir, min_step, timeout)
  if step is None:
    pytest.fail(f'the run ended, or wrote no backup at step {min_step} in time, before it '
                f'could be killed: {_tail(proc)}')
  return step


OVERRIDES = 'epochs=4, steps_per_epoch=20, backup_every_steps=5, sample_chars=20'
FAST_OVERRIDES = 'epochs=2, steps_per_epoch=20, backup_every_steps=5, sample_chars=0'


def _run_fn_here(args):
  """The same run_fn call in this process (spares a TensorFlow start-up)."""
  from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top
  from components import trainer_module  # pylint: disable=g-import-not-at-top
  trainer_module.run_fn(FnArgs(train_files=[args['train']], eval_files=[args['eval']],
                               serving_model_dir=args['serving'], model_run_dir=args['run'],
                               custom_config=dict(args['config']), base_model=None))


@pytest.mark.skipif(not SLOW, reason='slow: set CHAR_RNN_SLOW_TESTS=1 (three run_fn calls, '
                                     'one SIGKILLed in a subprocess: 1-2 min on 2 cores)')
def test_a_killed_training_resumes_from_its_last_backup_with_the_same_result(tiny_pipeline,
                                                                               tmp_path):
  """run_fn SIGKILLed mid-epoch in a subprocess; the same call again finishes the job."""
  reference = _run_fn_args(tiny_pipeline, str(tmp_path / 'reference'),
                           str(tmp_path / 'reference-backup'), FAST_OVERRIDES)
  _run_fn_here(reference)
  uninterrupted = _metrics(reference)
  assert uninterrupted['resumed_from_step'] == 0 and uninterrupted['train_steps'] == 40
  assert not os.path.exists(reference['config']['backup_dir'])   # deleted after success

  backup_dir = str(tmp_path / 'backup')
  killed = _run_fn_args(tiny_pipeline, str(tmp_path / 'killed'), backup_dir, FAST_OVERRIDES)
  step = _kill_at_backup(_start_run_fn(killed), backup_dir, min_step=25)   # in epoch 2
  assert not os.path.exists(os.path.join(killed['serving'], 'saved_model.pb'))

  resumed = _run_fn_args(tiny_pipeline, str(tmp_path / 'resumed'), backup_dir, FAST_OVERRIDES)
  _run_fn_here(resumed)
  metrics = _metrics(resumed)
  assert metrics['resumed_from_step'] >= step > 20
  assert metrics['train_steps'] == uninterrupted['train_steps'] == 40
  assert metrics['epochs_run'] == 2 and metrics['stop_reason'] == 'epochs'
  assert abs(metrics['eval_loss'] - uninterrupted['eval_loss']) < 0.01
  assert metrics['elapsed_seconds'] > metrics['train_seconds'] > 0
  assert not os.path.exists(backup_dir)
  with open(os.path.join(resumed['run'], 'history.json')) as f:
    history = json.load(f)
  # The history spans the killed execution's steps and the resumed one's.
  assert [e['epoch'] for e in history['epochs']] == [1, 2]
  assert [p['step'] for p in history['steps']] == list(range(1, 41))
  with open(os.path.join(reference['run'], 'history.json')) as f:
    reference_history = json.load(f)
  for a, b in zip(history['steps'], reference_history['steps']):
    assert a['loss'] == pytest.approx(b['loss'], abs=1e-3), a['step']   # the same data


def test_history_json_has_the_schema_the_run_report_reads(tiny_pipeline):
  [run_dir] = glob.glob(os.path.join(tiny_pipeline.pipeline_root, 'CharRnnTrainer',
                                     'model_run', '*'))[:1]
  with open(os.path.join(run_dir, 'history.json')) as f:
    history = json.load(f)
  assert set(history) == {'steps', 'epochs', 'time_budget_seconds', 'stop_reason'}
  tiny = configs.get_preset('tiny', '')
  assert history['stop_reason'] == 'epochs' and history['time_budget_seconds'] is None
  assert [p['step'] for p in history['steps']] == list(range(1, tiny.steps_per_epoch + 1))
  for point in history['steps']:
    assert {k: type(v) for k, v in point.items()} == {
        'step': int, 'epoch': int, 'loss': float, 'learning_rate': float,
        'elapsed_seconds': float}
  [epoch] = history['epochs']
  assert {k: type(v) for k, v in epoch.items()} == {
      'epoch': int, 'loss': float, 'val_loss': float, 'sample': str, 'elapsed_seconds': float}
  assert epoch['sample'].startswith(tiny.sample_prompt)
  assert len(epoch['sample']) == len(tiny.sample_prompt) + tiny.sample_chars


@pytest.mark.skipif(not SLOW, reason='slow: set CHAR_RNN_SLOW_TESTS=1')
def test_the_pipeline_killed_in_training_resumes_on_the_same_command(tiny_pipeline, tmp_path):
  """`python -m pipeline.local_runner` SIGKILLed mid-training, then run again."""
  def command(output_dir):
    return _start([sys.executable, '-m', 'pipeline.local_runner'], output_dir + '.log',
                  CHAR_RNN_OUTPUT_DIR=output_dir, CHAR_RNN_PRESET='tiny',
                  CHAR_RNN_OVERRIDES=OVERRIDES, CHAR_RNN_CORPUS=tiny_pipeline_corpus)

  from tests.conftest import CORPUS_PATH  # pylint: disable=g-import-not-at-top
  tiny_pipeline_corpus = CORPUS_PATH

  def trainer_metrics(output_dir):
    found = glob.glob(os.path.join(configs.pipeline_root(output_dir), 'CharRnnTrainer', 'model',
                                   '*', 'Format-Serving', 'assets.extra', 'metrics.json'))
    return [json.load(open(p)) for p in found]   # pylint: disable=consider-using-with

  reference = _copy_run(tiny_pipeline, str(tmp_path / 'reference'))
  proc = command(reference)
  assert proc.wait() == 0, _tail(proc)
  [uninterrupted] = [m for m in trainer_metrics(reference) if m['train_steps'] == 80]

  output_dir = _copy_run(tiny_pipeline, str(tmp_path / 'killed'))
  backups = os.path.join(configs.pipeline_root(output_dir), 'CharRnnTrainer', '.backup', '*')
  proc = command(output_dir)
  deadline = time.monotonic() + 600
  while not [p for p in glob.glob(os.path.join(backups, 'step-*', 'state.json'))
              if '.tmp-' not in p]:
    assert proc.poll() is None, 'the pipeline ended before it could be killed'
    assert time.monotonic() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  versions = _versions(output_dir)
  proc = command(output_dir)
  assert proc.wait() == 0, _tail(proc)
  [resumed] = [m for m in trainer_metrics(output_dir) if m['resumed_from_step']]
  assert resumed['resumed_from_step'] > 0
  assert resumed['train_steps'] == uninterrupted['train_steps'] == 80
  assert abs(resumed['eval_loss'] - uninterrupted['eval_loss']) < 0.01
  assert len(_versions(output_dir)) == len(versions) + 1
  assert not glob.glob(os.path.join(backups, 'step-*'))
