"""Data-parallel training (components/multiworker.py): TF_CONFIG, and 2 real workers on loopback.

The cluster test starts two processes running run_fn, each with its TF_CONFIG
(tests/worker_cluster.py), on real WindowGen records of a corpus made here from
tests/test_model.py's text, so that the chief's export has the vocabulary the
export-contract tests are written for: they run on it unchanged (signatures,
Keras equality of the exported weights, padding, seeds, [UNK], limits).

That run costs 1-3 minutes on 2 loaded cores (two TensorFlow processes, WindowGen,
tracing, export), so it runs with CHAR_RNN_SLOW_TESTS=1. By default: TF_CONFIG's
parsing, and that run_fn takes the path TF_CONFIG says (in-process, no training).
"""

import json
import math
import os

import numpy as np
import pytest

from components import multiworker
from components import training
from pipeline import configs
from tests import test_model as contract
from tests import worker_cluster

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')
_skip_unless_slow = pytest.mark.skipif(
    not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: 2 worker processes train and export on '
    'loopback (1-3 min each run)')
# One pytest-xdist worker runs them all, so the module's clusters run once, one at a time.
_one_xdist_worker = pytest.mark.xdist_group('multiworker')


def slow(test):
  return _skip_unless_slow(_one_xdist_worker(test))

# tiny, smaller still: 50-character windows, 6 steps of a global batch of 32. float32:
# on a CPU with native bf16, `auto` would let each run's timing pick its dtype, and
# runs compared step by step must compute alike (auto has its own test).
OVERRIDES = ('seq_length=50, steps_per_epoch=6, eval_steps=2, sample_chars=20, '
             'max_generate_chars=300, backup_every_steps=0, precision=float32')


# ------------------------------------------------------------------ TF_CONFIG
def _config(cluster, task):
  return json.dumps({'cluster': cluster, 'task': task})


def test_no_tf_config_or_no_cluster_means_the_single_process_path():
  assert multiworker.cluster_from_env({}) is None
  for text in ('', '  ', '{}', '{"cluster": {}}', '{"task": {"type": "worker", "index": 0}}'):
    assert multiworker.parse_tf_config(text) is None, text


def test_a_single_task_cluster_stays_single_process():
  # What Vertex AI sets for a one-replica job.
  cluster = multiworker.cluster_from_env({'TF_CONFIG': _config(
      {'chief': ['10.0.0.1:2222']}, {'type': 'chief', 'index': 0})})
  assert cluster.num_workers == 1 and not cluster.is_multi_worker and cluster.is_chief


def test_the_chief_is_the_chief_task_or_worker_0_without_one():
  with_chief = {'chief': ['h0:1'], 'worker': ['h1:1', 'h2:1']}
  chief = multiworker.parse_tf_config(_config(with_chief, {'type': 'chief', 'index': 0}))
  assert chief.is_chief and chief.num_workers == 3 and chief.is_multi_worker
  assert chief.task_name == 'chief:0'
  for index in (0, 1):
    worker = multiworker.parse_tf_config(_config(with_chief, {'type': 'worker', 'index': index}))
    assert not worker.is_chief
  workers = {'worker': ['h0:1', 'h1:1']}
  assert multiworker.parse_tf_config(_config(workers, {'type': 'worker', 'index': 0})).is_chief
  assert not multiworker.parse_tf_config(
      _config(workers, {'type': 'worker', 'index': 1})).is_chief


@pytest.mark.parametrize('text, match', [
    ('{not json', 'TF_CONFIG: not JSON'),
    ('[1, 2]', 'TF_CONFIG: must be a JSON object'),
    ('{"cluster": ["h0:1"], "task": {}}', 'TF_CONFIG: "cluster" must map task types'),
    (_config({'worker': ['h0:1'], 'ps': ['h1:1']}, {'type': 'worker', 'index': 0}),
     r"TF_CONFIG: task types \['ps'\] are not supported: MultiWorkerMirroredStrategy"),
    (_config({'worker': 'h0:1,h1:1'}, {'type': 'worker', 'index': 0}),
     'TF_CONFIG: cluster\\["worker"\\] must be a non-empty list of "host:port"'),
    (_config({'worker': ['h0', 'h1:1']}, {'type': 'worker', 'index': 0}),
     'non-empty list of "host:port"'),
    (_config({'chief': ['h0:1', 'h1:1']}, {'type': 'chief', 'index': 0}),
     'TF_CONFIG: a cluster has at most one chief'),
    (json.dumps({'cluster': {'worker': ['h0:1', 'h1:1']}}), 'TF_CONFIG: "task" must be'),
    (_config({'worker': ['h0:1', 'h1:1']}, {'type': 'chief', 'index': 0}),
     "TF_CONFIG: task type 'chief' is not in the cluster"),
    (_config({'worker': ['h0:1', 'h1:1']}, {'type': 'worker', 'index': 2}),
     "TF_CONFIG: task index 2 is not one of the 2 'worker' tasks"),
    (_config({'worker': ['h0:1', 'h1:1']}, {'type': 'worker', 'index': '1'}),
     "TF_CONFIG: task index '1' is not one of"),
])
def test_a_malformed_tf_config_is_an_error_naming_it_and_the_fault(text, match):
  with pytest.raises(ValueError, match=match):
    multiworker.parse_tf_config(text)


def test_the_global_batch_must_divide_over_the_workers():
  assert multiworker._split_batch(32, 2) == 16
  with pytest.raises(ValueError, match='batch_size=33 .* does not divide evenly over 2 workers'):
    multiworker._split_batch(33, 2)


def _run_fn_raises(monkeypatch, tf_config, error, match):
  from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top
  from components import trainer_module  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TF_CONFIG', tf_config)
  with pytest.raises(error, match=match):
    trainer_module.run_fn(FnArgs(custom_config={'not_a_setting': 1}))


def test_run_fn_refuses_a_malformed_tf_config_before_anything_else(monkeypatch):
  _run_fn_raises(monkeypatch, '{"cluster": {"worker": ["h0:1"]', ValueError,
                 'TF_CONFIG: not JSON')


def test_run_fn_stays_on_the_single_process_path_for_a_single_task(monkeypatch):
  from components.training_config import ConfigError  # pylint: disable=g-import-not-at-top
  # The single-process path's first check (the settings) answers, not a strategy.
  _run_fn_raises(monkeypatch, _config({'chief': ['127.0.0.1:1']}, {'type': 'chief', 'index': 0}),
                 ConfigError, 'custom_config does not match TrainingConfig')


# ------------------------------------------------------------ 2 real workers
def _corpus_text(num_chars: int) -> str:
  """Lines of test_model.TEXT's words in random order: exactly its characters."""
  rng = np.random.default_rng(0)
  words = contract.TEXT.replace('\n', ' ').split(' ')
  out = [contract.TEXT]
  size = len(contract.TEXT)
  while size < num_chars:
    line = ' '.join(rng.choice([w for w in words if w], size=8)) + '\n'
    out.append(line)
    size += len(line)
  return ''.join(out)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  preset = configs.get_preset('tiny', OVERRIDES)
  workdir = str(tmp_path_factory.mktemp('multiworker-data'))
  return worker_cluster.make_examples(workdir, _corpus_text(40_000), preset), preset


def _train(tmp_path_factory, inputs, workers, chief=False, base_model=None, **settings):
  """One run_fn on `workers` processes; `settings`: training settings over the preset's."""
  examples, preset = inputs
  workdir = str(tmp_path_factory.mktemp(f'workers-{workers}'))
  args = worker_cluster.run_fn_args(examples, workdir, dict(preset.training_config(), **settings),
                                    base_model=base_model)
  cluster = worker_cluster.Cluster(args, workers, workdir, chief=chief)
  try:
    codes = cluster.wait(timeout=400)
  except Exception:   # pylint: disable=broad-except
    pytest.fail('the workers did not finish in 400 s:\n' +
                '\n'.join(cluster.tail(i) for i in range(workers)))
  for i, code in enumerate(codes):
    assert code == 0, f'task {i} failed:\n{cluster.tail(i)}'
  return args, preset, cluster


@pytest.fixture(scope='module')
def two_workers(tmp_path_factory, inputs):
  """One run of 2 workers (no chief task: worker 0 is the chief), as a TFJob of workers."""
  return _train(tmp_path_factory, inputs, 2)


def _metrics(args):
  with open(os.path.join(args['serving'], 'assets.extra', 'metrics.json')) as f:
    return json.load(f)


def _step_losses(args):
  with open(os.path.join(args['run'], 'history.json')) as f:
    return [p['loss'] for p in json.load(f)['steps']]


@slow
def test_a_chief_and_a_worker_learn_what_one_process_learns_from_the_same_data(
    tmp_path_factory, inputs, two_workers):
  """Vertex AI's layout (a 'chief' task and a 'worker') against plain run_fn (Keras fit):
  the same batches, seed and settings, so the same losses up to float summation order."""
  single, _, _ = _train(tmp_path_factory, inputs, 1)
  pair, _, cluster = _train(tmp_path_factory, inputs, 2, chief=True)
  assert _metrics(pair)['task'] == 'chief:0'
  assert 'Task worker:0 done after 6 steps' in cluster.tail(1, 20000)
  for args in (pair, two_workers[0]):
    np.testing.assert_allclose(_step_losses(args), _step_losses(single), rtol=1e-4)
    assert _metrics(args)['eval_loss'] == pytest.approx(_metrics(single)['eval_loss'], rel=1e-4)


@slow
def test_every_worker_warm_starts_from_the_served_model_as_one_process_does(
    tmp_path_factory, inputs, two_workers):
  """A worker that did not load the served weights would train different ones: the
  all-reduced losses would then differ from a single warm-started process's."""
  served = two_workers[0]['serving']
  single, _, _ = _train(tmp_path_factory, inputs, 1, base_model=served)
  pair, _, _ = _train(tmp_path_factory, inputs, 2, base_model=served)
  for args in (single, pair):
    assert _metrics(args)['start'].startswith(
        f'warm-started from {os.path.join(served, "assets.extra", "keras")}')
  np.testing.assert_allclose(_step_losses(pair), _step_losses(single), rtol=1e-4)
  # Not a fresh start: the first step is already below a fresh start's first step.
  assert _step_losses(pair)[0] < _step_losses(two_workers[0])[0] - 0.05


@slow
def test_clipnorm_clips_the_global_gradient_as_fit_clips_the_single_process_one(
    tmp_path_factory, inputs, two_workers):
  """Each worker scales its part by the factor the summed gradient calls for: the same
  updates as Keras's clipnorm in fit, down to the embedding's IndexedSlices, whose norm
  Keras takes over the slices (clipping a dense sum, or halving the slices that Adam's
  second moment then squares, trained measurably differently)."""
  single, _, _ = _train(tmp_path_factory, inputs, 1, clipnorm=0.05)
  pair, _, _ = _train(tmp_path_factory, inputs, 2, clipnorm=0.05)
  assert _metrics(pair)['config']['clipnorm'] == 0.05
  np.testing.assert_allclose(_step_losses(pair), _step_losses(single), rtol=1e-4)
  # The clip binds: without it the same workers trained differently (Adam undoes a
  # constant scale, so the clip shows only from step 3 on; summation order moves ~1e-7).
  assert np.max(np.abs(np.subtract(_step_losses(pair), _step_losses(two_workers[0])))) > 1e-3


@slow
def test_weight_decay_under_the_strategy_trains_as_adamw_trains_one_process(
    tmp_path_factory, inputs, two_workers):
  """build_optimizer's AdamW in the custom loop: each worker decays its mirrored copy by
  the agreed rate, so the workers train as fit trains one process."""
  single, _, _ = _train(tmp_path_factory, inputs, 1, weight_decay=0.5)
  pair, _, _ = _train(tmp_path_factory, inputs, 2, weight_decay=0.5)
  assert _metrics(pair)['config']['weight_decay'] == 0.5
  np.testing.assert_allclose(_step_losses(pair), _step_losses(single), rtol=1e-4)
  # The decay acts: without it the same workers trained differently.
  assert np.max(np.abs(np.subtract(_step_losses(pair), _step_losses(two_workers[0])))) > 1e-3


@slow
def test_early_stopping_under_the_strategy_stops_where_one_process_stops_with_the_best_epoch(
    tmp_path_factory, inputs):
  """Early stopping decides on the all-reduced validation loss and keeps the best epoch's
  weights, as fit's run does: 8 epochs at a rate that overfits the tiny corpus in ~5.
  The same losses to 1e-4, step by step, through every epoch both ran."""
  settings = dict(early_stopping_patience=1, epochs=8, learning_rate=0.05)
  single, _, _ = _train(tmp_path_factory, inputs, 1, **settings)
  pair, _, _ = _train(tmp_path_factory, inputs, 2, **settings)
  np.testing.assert_allclose(_step_losses(pair), _step_losses(single), rtol=1e-4)
  one, two = _metrics(single), _metrics(pair)
  assert one['stop_reason'] == two['stop_reason'] == 'early_stopping'
  assert two['epochs_run'] == one['epochs_run'] < 8
  for metrics in (one, two):
    val_losses = metrics['history']['val_loss']
    assert val_losses[-1] > min(val_losses)               # it stopped on a worse epoch ...
    assert metrics['eval_loss'] == pytest.approx(min(val_losses))   # ... and kept the best
  assert two['eval_loss'] == pytest.approx(one['eval_loss'], rel=1e-4)


@slow
def test_auto_precision_is_measured_by_the_chief_and_taken_by_every_worker(
    tmp_path_factory, inputs):
  """Workers that each timed the candidates could pick different dtypes and train
  different models: the chief measures (on a CPU with native bf16, as run_fn does) and
  the other worker logs the chief's choice. Without native bf16 there is nothing to
  time, and both take float32."""
  pair, _, cluster = _train(tmp_path_factory, inputs, 2, precision='auto')
  chief = _metrics(pair)
  if training.native_bf16_flags():
    assert chief['precision_reason'].startswith('auto on a CPU with'), chief['precision_reason']
    assert set(chief['precision_timings_ms']) == {'float32', 'mixed_bfloat16'}
  else:
    assert chief['precision'] == 'float32'
    assert chief['precision_reason'].startswith('auto: the CPU has no native bf16')
  assert (f"Compute precision: {chief['precision']} (auto: the chief's choice"
          in cluster.tail(1, 10**7)), cluster.tail(1)


@slow
def test_two_workers_train_together_and_only_the_chief_exports(two_workers):
  args, preset, cluster = two_workers
  serving = args['serving']
  extra = os.path.join(serving, 'assets.extra')
  with open(os.path.join(extra, 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['strategy'] == 'MultiWorkerMirroredStrategy'
  assert metrics['workers'] == 2 and metrics['task'] == 'worker:0'
  assert metrics['global_batch_size'] == preset.batch_size
  assert metrics['per_worker_batch_size'] == preset.batch_size // 2
  assert metrics['train_steps'] == preset.steps_per_epoch * preset.epochs
  assert metrics['stop_reason'] == 'epochs'
  # Trained, not just exported: better than a uniform guess over the vocabulary.
  assert math.isfinite(metrics['eval_loss'])
  assert metrics['eval_loss'] < math.log(len(contract.VOCAB))
  assert metrics['chars_per_second'] > 0
  assert metrics['chars_per_second_per_worker'] == pytest.approx(
      metrics['chars_per_second'] / 2)
  # Every key the single-process path writes is there too.
  for key in ('bits_per_char', 'perplexity', 'epochs_run', 'train_seconds', 'train_steps',
              'resumed_from_step', 'stopped_by_time_budget', 'time_budget_seconds', 'history',
              'start', 'precision', 'seed', 'vocab_size', 'state_size', 'config',
              'elapsed_seconds', 'export_seconds', 'export_cpu_seconds',
              'history_seconds'):
    assert key in metrics, key
  with open(os.path.join(extra, 'vocabulary.json')) as f:
    assert json.load(f)['tokens'] == contract.VOCAB.tokens
  # The chief's ModelRun: history and a checkpoint per epoch.
  with open(os.path.join(args['run'], 'history.json')) as f:
    history = json.load(f)
  assert [p['step'] for p in history['steps']] == list(range(1, metrics['train_steps'] + 1))
  assert os.listdir(os.path.join(args['run'], 'checkpoints')) == ['ckpt_01.weights.h5']
  # Both took part (the other worker logged its own end), and the other worker's
  # scratch directory is gone.
  assert 'Task worker:1 done after 6 steps; waiting for the chief to export.' in cluster.tail(1, 20000)
  assert os.listdir(cluster.tmpdirs[1]) == []


@pytest.fixture(scope='module')
def exported(two_workers):
  """test_model's fixture tuple, for the chief's export: (Keras model, config, path, loaded)."""
  args, _, _ = two_workers
  return contract.load_export(args['serving'])


@slow
@pytest.mark.parametrize('check', [
    'test_signatures_have_the_contracts_names_dtypes_and_shapes',
    'test_one_step_logits_equal_the_keras_model',
    'test_feeding_one_step_its_own_state_equals_one_long_call',
    'test_padding_does_not_leak_into_shorter_rows',
    'test_generate_is_deterministic_for_a_seed_and_returns_only_the_continuation',
    'test_generate_state_continues_with_one_step',
    'test_unknown_characters_map_to_unk_and_unk_is_never_sampled',
    'test_generate_rejects_too_many_characters_and_negative_temperature',
    'test_score_equals_keras_log_likelihood',
])
def test_the_chiefs_export_keeps_the_export_contract(exported, check):
  getattr(contract, check)(exported)


@slow
def test_the_chiefs_export_loads_without_project_code(exported):
  contract.test_saved_model_uses_core_ops_only_and_loads_without_project_code(exported)


@slow
def test_a_vertex_custom_jobs_replicas_train_through_tfx_run_executor(tmp_path_factory, inputs):
  """Each replica's command exactly as TFX's Vertex launcher writes it into the CustomJob
  (components/vertex_trainer.py), run on loopback with Vertex's TF_CONFIG layout."""
  import sys  # pylint: disable=g-import-not-at-top
  from tfx.extensions.google_cloud_ai_platform import training_clients  # pylint: disable=g-import-not-at-top
  from tfx.proto import trainer_pb2  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top
  from components import artifacts, vertex_trainer  # pylint: disable=g-import-not-at-top
  examples, preset = inputs
  workdir = str(tmp_path_factory.mktemp('vertex'))

  def artifact(cls, uri, **properties):
    a = cls()
    a.uri = uri
    for key, value in properties.items():
      a.set_int_custom_property(key, value)
    return a

  examples_artifact = artifact(
      standard_artifacts.Examples, os.path.dirname(os.path.dirname(examples['train'])),
      num_windows_train=examples['num_windows_train'],
      num_windows_eval=examples['num_windows_eval'])
  examples_artifact.split_names = '["train", "eval"]'
  input_dict = {'examples': [examples_artifact],
                'vocabulary': [artifact(artifacts.Vocabulary, examples['vocabulary_uri'])]}
  output_dict = {'model': [artifact(standard_artifacts.Model, os.path.join(workdir, 'model'))],
                 'model_run': [artifact(standard_artifacts.ModelRun,
                                        os.path.join(workdir, 'model_run'))]}
  launcher = vertex_trainer.custom_config('test-project', 'europe-west4', 'image', 2,
                                          'n1-standard-4')
  exec_properties = {
      'custom_config': json.dumps(dict(preset.training_config(), **launcher)),
      'train_args': proto_utils.proto_to_json(trainer_pb2.TrainArgs(splits=['train'])),
      'eval_args': proto_utils.proto_to_json(trainer_pb2.EvalArgs(splits=['eval'])),
      'run_fn': configs.TRAINER_RUN_FN}
  client = training_clients.VertexJobClient.__new__(training_clients.VertexJobClient)
  job = client.create_training_job(
      input_dict, output_dict, exec_properties,
      'components.vertex_trainer.WorkerExecutor',
      dict(launcher['ai_platform_training_args']), None, None)
  commands = []
  for pool in job['job_spec']['worker_pool_specs']:
    command = pool['container_spec']['command']
    assert command[0] == 'python'
    commands += [[sys.executable] + command[1:]] * pool['replica_count']
  assert len(commands) == 2
  cluster = worker_cluster.Cluster({}, 2, workdir, chief=True, commands=commands)
  codes = cluster.wait(timeout=400)
  for i, code in enumerate(codes):
    assert code == 0, f'replica {i} failed:\n{cluster.tail(i)}'
  serving = os.path.join(workdir, 'model', 'Format-Serving')
  assert os.path.exists(os.path.join(serving, 'saved_model.pb'))
  metrics = _metrics({'serving': serving})
  assert metrics['task'] == 'chief:0' and metrics['workers'] == 2
  assert 'ai_platform_training_args' not in metrics['config']
  assert 'Task worker:0 done after 6 steps' in cluster.tail(1, 20000)


@slow
def test_the_chiefs_time_budget_stops_every_worker_after_the_same_step(tmp_path_factory, inputs):
  """The budget and the cosine rate are the chief's clock's: agreed inside each step."""
  examples, preset = inputs
  workdir = str(tmp_path_factory.mktemp('budget'))
  settings = dict(preset.training_config(), steps_per_epoch=100_000, max_train_seconds=90.0,
                  lr_schedule='cosine', min_lr_ratio=0.1)
  args = worker_cluster.run_fn_args(examples, workdir, settings)
  cluster = worker_cluster.Cluster(args, 2, workdir)
  codes = cluster.wait(timeout=400)
  for i, code in enumerate(codes):
    assert code == 0, f'task {i} failed:\n{cluster.tail(i)}'
  metrics = _metrics(args)
  assert metrics['stop_reason'] == 'time_budget'
  assert 0 < metrics['train_steps'] < 100_000
  assert f'Task worker:1 done after {metrics["train_steps"]} steps' in cluster.tail(1, 20000)
  with open(os.path.join(args['run'], 'history.json')) as f:
    rates = [p['learning_rate'] for p in json.load(f)['steps']]
  assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0]


@slow
def test_a_killed_two_worker_job_resumes_from_the_chiefs_backup_with_the_same_result(
    tmp_path_factory, inputs):
  """Both processes SIGKILLed mid-epoch (a job restart); the same job again finishes from the
  chief's newest backup, with the uninterrupted job's step losses. A worker that cannot read
  that backup stops the job with an error, on every worker, instead of diverging or hanging."""
  import sys  # pylint: disable=g-import-not-at-top
  examples, preset = inputs
  settings = dict(preset.training_config(), epochs=2, steps_per_epoch=30,
                  backup_every_steps=5, sample_chars=0)

  def job(name, backup_dir):
    workdir = str(tmp_path_factory.mktemp(name))
    return workdir, worker_cluster.run_fn_args(examples, workdir,
                                               dict(settings, backup_dir=backup_dir))

  def finish(workdir, args, expect_ok=True):
    cluster = worker_cluster.Cluster(args, 2, workdir)
    codes = cluster.wait(timeout=400)
    for i, code in enumerate(codes):
      assert (code == 0) == expect_ok, f'task {i} exited with {code}:\n{cluster.tail(i)}'
    return cluster

  backup_root = str(tmp_path_factory.mktemp('backups'))
  reference_dir, reference = job('reference', os.path.join(backup_root, 'reference'))
  finish(reference_dir, reference)
  assert _metrics(reference)['resumed_from_step'] == 0
  assert _metrics(reference)['train_steps'] == 60
  assert not os.path.exists(reference['config']['backup_dir'])   # deleted after the export

  backup_dir = os.path.join(backup_root, 'killed')
  killed_dir, killed = job('killed', backup_dir)
  cluster = worker_cluster.Cluster(killed, 2, killed_dir)
  step = worker_cluster.kill_at_backup(cluster.procs, backup_dir, min_step=35)   # in epoch 2
  assert step is not None, 'no backup before the job ended:\n' + cluster.tail(0)
  assert not os.path.exists(os.path.join(killed['serving'], 'saved_model.pb'))
  [newest] = sorted(n for n in os.listdir(backup_dir) if '.tmp-' not in n)[-1:]
  assert set(os.listdir(os.path.join(backup_dir, newest))) == {
      'model.weights.h5', 'optimizer.npz', 'state.json'}

  # The worker's backup_dir is not the chief's (a directory on each machine).
  elsewhere = dict(killed, config=dict(killed['config'],
                                       backup_dir=os.path.join(backup_root, 'elsewhere')))
  commands = [[sys.executable, '-c', worker_cluster.RUN_FN, json.dumps(a)]
              for a in (killed, elsewhere)]
  unshared_dir = str(tmp_path_factory.mktemp('unshared'))
  unshared = worker_cluster.Cluster({}, 2, unshared_dir, commands=commands)
  for i, code in enumerate(unshared.wait(timeout=400)):
    assert code != 0
    assert "1 worker(s) could not load the chief's backup at step" in unshared.tail(i), i
  assert not os.path.exists(os.path.join(killed['serving'], 'saved_model.pb'))
  assert newest in os.listdir(backup_dir)                 # restoring took nothing away

  resumed = finish(killed_dir, killed)
  metrics = _metrics(killed)
  assert metrics['resumed_from_step'] >= step
  assert metrics['train_steps'] == 60 and metrics['stop_reason'] == 'epochs'
  assert f'resumed from the backup at step {metrics["resumed_from_step"]}' in resumed.tail(
      1, 20000)
  assert not os.path.exists(backup_dir)
  # Weights, Adam's slots and the data stream all carried over: the same losses, step by
  # step (the history spans the killed execution's steps and the resumed one's).
  np.testing.assert_allclose(_step_losses(killed), _step_losses(reference), rtol=1e-4)
  assert metrics['eval_loss'] == pytest.approx(_metrics(reference)['eval_loss'], rel=1e-4)
