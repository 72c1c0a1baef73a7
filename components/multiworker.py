"""Data-parallel training across workers: run_fn's path when TF_CONFIG describes a cluster.

Vertex AI Training (a CustomJob with several replicas) and the Kubeflow Training
Operator (a TFJob) start the same program on every machine and tell each one
the cluster and its own place in it through the `TF_CONFIG` environment
variable:

  {"cluster": {"chief": ["host0:port"], "worker": ["host1:port", ...]},
   "task": {"type": "worker", "index": 0}}

`cluster_from_env` reads it (the one owner of that format here). A cluster of
more than one task trains here, with `tf.distribute.MultiWorkerMirroredStrategy`
(every worker holds the whole model; gradients are summed over the workers by
collective all-reduce over gRPC, as TF sets it up from TF_CONFIG); anything else,
TF_CONFIG absent or a single task, leaves run_fn on its single-process path
(components/trainer_module.py), unchanged.

Why a custom loop and not `model.fit`: Keras 3.12's `fit` under
MultiWorkerMirroredStrategy fails on TF 2.16. So a `tf.function` train step runs
under `strategy.run`, with the same settings as the single-process path:

* batches: the global batch is `batch_size`, split evenly over the workers
  (batch_size must divide by the number of workers). So a step sees as much data
  as a single-process step, an epoch has as many steps, and the learning rate
  means the same; only the work of a step is shared. Every worker reads the very
  same stream as the single-process run (trainer_module.make_dataset with the
  same seed: shuffles, random offsets) and keeps its own rows of each batch, so
  step k trains on exactly the single-process run's batch k. The price is that
  every worker reads and parses all windows (cheap next to the RNN's step);
* loss: each worker sums its rows' per-character losses and divides by the
  global batch's characters; the all-reduced gradient is then the gradient of
  the global mean, as in `fit`. clipnorm clips that summed gradient (one more
  all-reduce per step when clipnorm > 0), not each worker's part
  (_clip_by_global_norm_per_variable);
* the learning-rate schedule, the time budget (training.Budget, Clock), the
  divergence ceiling (training.divergence), early stopping, history.json
  (training.TrainingState, write_history), progress lines (training.Progress)
  and the per-epoch sample (trainer_module._SampleText) are reused. What could
  not be reused is `training.TrainingMonitor` itself: it is a Keras callback
  that decides on each worker's own clock, and workers that disagree by one step
  on stopping would leave the others waiting in an all-reduce forever. Here only
  the chief decides: its proposal (this step's learning rate, whether to stop
  after it) is all-reduced inside the train step, before the update, so every
  worker applies the same rate and stops after the same step. Epoch ends agree
  the same way. Losses, validation losses and so divergence and early stopping
  are all-reduced values, the same on every worker;
* validation runs on every worker (each its rows of the eval batches, summed by
  all-reduce), after every epoch and after a stop mid-epoch.

Only the chief (task type 'chief'; worker 0 when the cluster has no chief)
writes: the export and its assets.extra (vocabulary.json, keras/, metrics.json
with the single-process keys plus 'workers', 'global_batch_size',
'per_worker_batch_size', 'chars_per_second', 'chars_per_second_per_worker',
'task'), TensorBoard logs, per-epoch checkpoints and history.json. The export
copies the weights into plain variables (model.CharRnnExport) and runs no
collective, so the other workers need not take part in it; whatever they log
(their TensorBoard summaries) goes to a temporary directory that is removed
when they finish, and they write nothing into fn_args' directories. They wait
for the chief's export in a last all-reduce and all tasks leave together: a
worker that exits first leaves the chief's coordination service waiting for
its heartbeat to time out (minutes) before the chief's process can end.

Step backups and resume: every `backup_every_steps` steps and at each epoch's
end the chief writes a backup (training.BackupStore: weights, Adam's slots in
optimizer.npz since this loop's optimizer is not the model's own, the state,
the best weights) to `backup_dir`, which must be storage every worker reads
(the pipeline root: gs:// on Vertex AI). Reading the mirrored variables is a
local read, as for the export, so the other workers do not take part. A job
that is killed and started again (a retried Trainer, or Vertex AI restarting
the whole job when a replica's machine restarts: `vertex_trainer` asks for it)
resumes: the chief picks the newest backup that loads, every worker loads that
same one, and all check together that each of them did (a worker that cannot
read the chief's backup is an error naming the directory, raised on every
worker at once, not a hang). The data stream restarts at the backup's step with
its seed, so the resumed job trains on the batches the uninterrupted one would.

Precision `auto` is measured by the chief as run_fn measures it, and every worker
takes the chief's choice (_agreed_precision).

Not done on this path (said plainly): precision mixed_float16 (it needs loss
scaling in the loop; refused with an error), and size by step time
(min_rnn_units: rnn_units trains, with a warning). Warm starts work: every
worker loads the same served weights.
"""

import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional

import keras
import tensorflow as tf
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from components import examples_format
from components import model as model_lib
from components import trainer_module
from components import training
from components.text import CharVocab
from components.training_config import TrainingConfig

TF_CONFIG_ENV = 'TF_CONFIG'
# The task types MultiWorkerMirroredStrategy trains with. Parameter servers and
# evaluators belong to other strategies; 'master' is TF1's name for the chief.
TASK_TYPES = ('chief', 'worker')
STRATEGY_NAME = 'MultiWorkerMirroredStrategy'


# ---------------------------------------------------------------- TF_CONFIG
@dataclasses.dataclass(frozen=True)
class Cluster:
  """TF_CONFIG's cluster and this process' task in it."""
  spec: Dict[str, List[str]]     # task type -> addresses
  task_type: str
  task_index: int

  @property
  def num_workers(self) -> int:
    """Tasks that train (chief included)."""
    return sum(len(self.spec.get(t, [])) for t in TASK_TYPES)

  @property
  def is_multi_worker(self) -> bool:
    return self.num_workers > 1

  @property
  def is_chief(self) -> bool:
    """The 'chief' task, or worker 0 when the cluster has no chief: it alone writes."""
    if self.spec.get('chief'):
      return self.task_type == 'chief'
    return self.task_type == 'worker' and self.task_index == 0

  @property
  def task_name(self) -> str:
    return f'{self.task_type}:{self.task_index}'


def _error(text: str) -> ValueError:
  return ValueError(f'{TF_CONFIG_ENV}: {text}')


def parse_tf_config(text: Optional[str]) -> Optional[Cluster]:
  """The cluster TF_CONFIG describes, or None when it describes none (absent, empty,
  no "cluster"); a ValueError naming TF_CONFIG and the fault for anything malformed."""
  if text is None or not text.strip():
    return None
  try:
    config = json.loads(text)
  except json.JSONDecodeError as e:
    raise _error(f'not JSON ({e}): {text[:200]!r}') from None
  if not isinstance(config, dict):
    raise _error(f'must be a JSON object with "cluster" and "task", not {text[:200]!r}')
  spec = config.get('cluster')
  if not spec:
    return None   # TF's own reading: no cluster, a single local process
  if not isinstance(spec, dict):
    raise _error(f'"cluster" must map task types to lists of "host:port", not {spec!r}')
  unknown = sorted(set(spec) - set(TASK_TYPES))
  if unknown:
    raise _error(f'task types {unknown} are not supported: {STRATEGY_NAME} trains with '
                 f'{" and ".join(map(repr, TASK_TYPES))} tasks only')
  for task_type, addresses in spec.items():
    if (not isinstance(addresses, list) or not addresses
        or not all(isinstance(a, str) and a.rpartition(':')[0] and
                   a.rpartition(':')[2].isdigit() for a in addresses)):
      raise _error(f'cluster["{task_type}"] must be a non-empty list of "host:port" '
                   f'strings, not {addresses!r}')
  if len(spec.get('chief', [])) > 1:
    raise _error(f'a cluster has at most one chief, not {len(spec["chief"])}')
  task = config.get('task')
  if not isinstance(task, dict) or 'type' not in task or 'index' not in task:
    raise _error(f'"task" must be {{"type": ..., "index": ...}} naming this process\' '
                 f'place in the cluster, not {task!r}')
  task_type, index = task['type'], task['index']
  if task_type not in spec:
    raise _error(f'task type {task_type!r} is not in the cluster ({sorted(spec)})')
  if isinstance(index, bool) or not isinstance(index, int) or not (
      0 <= index < len(spec[task_type])):
    raise _error(f'task index {index!r} is not one of the {len(spec[task_type])} '
                 f'{task_type!r} tasks (0..{len(spec[task_type]) - 1})')
  return Cluster(spec={k: list(v) for k, v in spec.items()}, task_type=task_type,
                 task_index=index)


def cluster_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
  """parse_tf_config(os.environ['TF_CONFIG']); None without one."""
  return parse_tf_config((os.environ if environ is None else environ).get(TF_CONFIG_ENV))


# ------------------------------------------------------------------ training
def _split_batch(global_batch: int, workers: int) -> int:
  if global_batch % workers:
    raise ValueError(
        f'batch_size={global_batch} (the global batch) does not divide evenly over '
        f'{workers} workers: choose a multiple of {workers}')
  return global_batch // workers


class _Summaries:
  """Epoch losses as Keras' TensorBoard callback writes them (train/, validation/)."""

  def __init__(self, log_dir: str):
    self._train = tf.summary.create_file_writer(os.path.join(log_dir, 'train'))
    self._validation = tf.summary.create_file_writer(os.path.join(log_dir, 'validation'))

  def epoch(self, epoch: int, loss: float, val_loss: float, lr: float) -> None:
    with self._train.as_default():
      tf.summary.scalar('epoch_loss', loss, step=epoch)
      tf.summary.scalar('epoch_learning_rate', lr, step=epoch)
    with self._validation.as_default():
      tf.summary.scalar('epoch_loss', val_loss, step=epoch)

  def close(self) -> None:
    self._train.close()
    self._validation.close()


def _clip_by_global_norm_per_variable(ctx, grads, clipnorm: float) -> list:
  """Each worker's part of Keras's clipnorm applied to the global gradient.

  Keras clips each variable's gradient to norm <= clipnorm. Here every worker scales its
  own part by the factor the *global* (summed) gradient calls for, and Adam sums the
  parts: the sum is the clipped global gradient. The embedding's gradient is
  IndexedSlices, one slice per character of the batch, and Keras measures (and Adam's
  second moment squares) those slices, not the dense rows they add up to: its norm is
  the root of the workers' summed squares and its slices stay slices, so that
  the update is the single-process one, not merely close to it."""
  local = [tf.reduce_sum(tf.square(g.values)) if isinstance(g, tf.IndexedSlices) else g
           for g in grads]
  total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
  clipped = []
  for g, t in zip(grads, total):
    sparse = isinstance(g, tf.IndexedSlices)
    norm = tf.sqrt(t if sparse else tf.reduce_sum(tf.square(t)))
    factor = clipnorm / tf.maximum(norm, clipnorm)
    clipped.append(tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape) if sparse
                   else g * factor)
  return clipped


def run(fn_args: FnArgs, cluster: Cluster) -> None:
  """run_fn on one task of a multi-worker cluster (see the module doc)."""
  clock = training.Clock()   # the time budget counts from here, as in run_fn
  # First: collectives can only be configured before TensorFlow's runtime starts.
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  except RuntimeError as e:
    raise RuntimeError(
        f'{STRATEGY_NAME} could not start ({e}): it must be created before this process '
        'runs any TensorFlow op; run the Trainer in a fresh process per task') from e
  workers = cluster.num_workers
  chief = cluster.is_chief
  custom = fn_args.custom_config
  config = TrainingConfig.from_custom_config(custom)
  if config.precision == 'mixed_float16':
    raise ValueError('precision mixed_float16 is not supported with several workers '
                     '(it needs loss scaling in the custom loop): use float32 or '
                     'mixed_bfloat16')
  global_batch = config.batch_size
  per_worker = _split_batch(global_batch, workers)
  replicas = strategy.num_replicas_in_sync
  if replicas != workers:
    raise ValueError(f'{replicas} replicas over {workers} workers: this path trains one '
                     'replica per worker (one CPU or one accelerator each)')
  logging.info('%s: task %s of %d workers (%s), global batch %d = %d per worker',
               STRATEGY_NAME, cluster.task_name, workers,
               'chief, writes the model' if chief else 'writes nothing', global_batch,
               per_worker)

  vocab = CharVocab.load(custom['vocabulary_uri'])
  model_config = trainer_module._model_config(config)  # pylint: disable=protected-access
  num_train = examples_format.count_records(
      trainer_module._matching(fn_args.train_files), custom.get('num_windows_train'))  # pylint: disable=protected-access
  num_eval = examples_format.count_records(
      trainer_module._matching(fn_args.eval_files), custom.get('num_windows_eval'))  # pylint: disable=protected-access
  per_epoch = trainer_module.steps_per_epoch(config, num_train, fn_args.train_files)
  eval_batches = min(trainer_module._eval_batches(config, num_eval),  # pylint: disable=protected-access
                     num_eval // global_batch)
  if eval_batches < 1:
    raise ValueError(f'the eval split has {num_eval} windows, fewer than one global batch '
                     f'of batch_size={global_batch}: lower batch_size or use a larger corpus')
  if len(training.size_ladder(config.rnn_units, config.min_rnn_units)) > 1:
    logging.warning('Size by step time is not applied with several workers: training '
                    '%d units (rnn_units).', config.rnn_units)

  # The same seed on every worker: the same initial weights (MWMS also copies
  # the chief's) and the same data stream, of which each keeps its rows.
  seed = config.seed if config.seed is not None else _agree_seed(strategy, chief)
  choice = _agreed_precision(strategy, chief, config, len(vocab), model_config, seed,
                             fn_args.train_files, num_train)
  precision = choice.precision
  logging.info('Compute precision: %s (%s)', precision, choice.reason)
  keras.utils.set_random_seed(seed)
  previous_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(precision)
  # A plain variable on each worker: the rate the chief chose for this step
  # (set inside the step, before the update) is what Adam reads.
  lr_var = tf.Variable(config.learning_rate, trainable=False, dtype=tf.float32)
  try:
    with strategy.scope():
      model = model_lib.build_keras_model(len(vocab), **model_config)
      # No clipnorm here: the step clips the global gradient itself.
      optimizer = model_lib.build_optimizer(lambda: lr_var,
                                            weight_decay=config.weight_decay)
      optimizer.build(model.trainable_variables)
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)

  def agree(value: float) -> float:
    """The chief's value, on every worker (a tiny all-reduce)."""
    return _all_sum(strategy, value if chief else 0.0)

  # Backups are read by every worker from the chief's directory, written by the chief.
  store = None
  if config.backup_every_steps and custom.get('backup_dir'):
    store = training.BackupStore(custom['backup_dir'])
  restored = _restore(strategy, store, model, optimizer, chief, agree) if store else None
  if restored:
    state, best_weights, start_note = store.resumed(restored, clock)
  else:
    best_weights = None
    state = training.TrainingState(seed=seed, rnn_units=config.rnn_units)
    start_note = trainer_module._warm_start(model, fn_args.base_model, vocab, model_config)  # pylint: disable=protected-access
  start_note += f' ({STRATEGY_NAME}, {workers} workers)'
  logging.info('Training %s', start_note)

  seq_length = config.seq_length
  chars_per_batch = float(global_batch * seq_length)
  token_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction='none')

  def rows(input_context: tf.distribute.InputContext):
    lo = input_context.input_pipeline_id * per_worker
    return lambda x, y: (x[lo:lo + per_worker], y[lo:lo + per_worker])

  def train_input(input_context):
    # From the state's step on (0, or a backup's): the uninterrupted run's batches.
    ds = trainer_module.make_dataset(
        fn_args.train_files, seq_length, global_batch, shuffle_buffer=config.shuffle_buffer,
        repeat=True, cache=config.steps_per_epoch is None, num_windows=num_train,
        random_offsets=config.random_offsets, seed=state.seed, skip_batches=state.step)
    return ds.map(rows(input_context))

  def eval_input(input_context):
    ds = trainer_module.make_dataset(
        fn_args.eval_files, seq_length, global_batch, cache=config.eval_steps is None,
        num_windows=num_eval)
    return ds.take(eval_batches).map(rows(input_context))

  train_iter = iter(strategy.distribute_datasets_from_function(train_input))
  eval_data = strategy.distribute_datasets_from_function(eval_input)

  def batch_loss(x, y, training_mode):
    logits = model(x, training=training_mode)
    return tf.reduce_sum(tf.cast(token_loss(y, logits), tf.float32)) / chars_per_batch

  @tf.function
  def train_step(iterator, proposal):
    def replica_step(x, y, proposal):
      ctx = tf.distribute.get_replica_context()
      # (tf.identity: an argument tensor has no device to all-reduce onto.)
      agreed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(proposal))
      lr_var.assign(agreed[0])
      with tf.GradientTape() as tape:
        loss = batch_loss(x, y, True)
      grads = tape.gradient(loss, model.trainable_variables)
      if config.clipnorm:
        grads = _clip_by_global_norm_per_variable(ctx, grads, config.clipnorm)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return loss, agreed
    x, y = next(iterator)
    loss, agreed = strategy.run(replica_step, args=(x, y, proposal))
    return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.experimental_local_results(agreed)[0])

  @tf.function
  def eval_step(iterator):
    x, y = next(iterator)
    loss = strategy.run(lambda x, y: batch_loss(x, y, False), args=(x, y))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

  def validate() -> float:
    iterator = iter(eval_data)
    return sum(float(eval_step(iterator)) for _ in range(eval_batches)) / eval_batches

  # Where this worker's logs go: the ModelRun for the chief, a scratch directory
  # (removed at the end) for the others.
  scratch = None if chief else tempfile.mkdtemp(prefix=f'char-rnn-{cluster.task_type}'
                                                       f'-{cluster.task_index}-')
  log_dir = fn_args.model_run_dir if chief else scratch
  try:
    eval_loss, loop_seconds = _train(
        config, clock, model, per_epoch, eval_batches, train_iter, train_step, validate, agree,
        chief, vocab, model_config, log_dir, state, best_weights,
        _Backups(store, model, optimizer, clock) if store and chief else None)
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)
  if not chief:
    logging.info('Task %s done after %d steps; waiting for the chief to export.',
                 cluster.task_name, state.step)
    agree(0.0)   # the end barrier (see below)
    return

  chars_per_second = state.step * chars_per_batch / max(loop_seconds, 1e-9)
  trainer_module.export(fn_args, model, vocab, model_config, config, state, clock, {
      'train_seconds': clock.elapsed(),
      'resumed_from_step': state.resumed_from_step,
      'start': start_note,
      'precision': precision,
      'precision_reason': choice.reason,
      'precision_timings_ms': choice.timings_ms,   # the chief's; null when not measured
      # This path's own figures.
      'strategy': STRATEGY_NAME,
      'workers': workers,
      'task': cluster.task_name,
      'global_batch_size': global_batch,
      'per_worker_batch_size': per_worker,
      'step_seconds_total': loop_seconds,         # the train steps alone
      'chars_per_second': chars_per_second,       # all workers together
      'chars_per_second_per_worker': chars_per_second / workers,
  }, eval_loss)
  if store:
    store.delete()
  logging.info('Eval loss %.4f nats/char after %d steps on %d workers (%s, %.0f chars/s); '
               'model exported to %s', eval_loss, state.step, workers, state.stop_reason,
               chars_per_second, fn_args.serving_model_dir)
  # Every task leaves together: a worker that exits while the chief still
  # exports makes the chief's coordination service wait for its heartbeat to
  # time out (minutes) before the chief's process can end.
  agree(0.0)


def _all_sum(strategy, value: float) -> float:
  """The sum of every worker's `value` (an all-reduce; float64, exact below 2**53)."""
  return float(strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(
      lambda: tf.constant(value, tf.float64)), axis=None))


def _agreed_precision(strategy, chief: bool, config: TrainingConfig, vocab_size: int,
                      model_config, seed: int, train_files, num_train) -> training.PrecisionChoice:
  """The compute precision, the same on every worker: the chief's choice.

  `auto` is decided as run_fn decides it: on a CPU with native bf16 the chief times a
  few steps of each candidate (a local model outside the strategy, on the global batch)
  and keeps the faster. Only the chief measures, and every worker takes its answer: two
  workers timing for themselves could choose differently, and replicas computing in
  different dtypes would each train a different model."""
  def time_candidates():
    return trainer_module._time_candidates(  # pylint: disable=protected-access
        config, vocab_size, model_config, seed, train_files, num_train)[0]

  if config.precision != 'auto':   # the preset's: the same on every worker, never timed
    return training.choose_precision(config.precision, time_candidates)
  choice = training.choose_precision('auto', time_candidates) if chief else None
  index = int(_all_sum(strategy, training.AUTO_CANDIDATES.index(choice.precision)
                       if chief else 0))
  return choice or training.PrecisionChoice(
      training.AUTO_CANDIDATES[index], "auto: the chief's choice (it measures, workers follow)")


def _agree_seed(strategy, chief: bool) -> int:
  """A fresh seed drawn by the chief, the same on every worker."""
  return int(_all_sum(strategy, random.SystemRandom().randrange(2**31) if chief else 0))


def _restore(strategy, store: training.BackupStore, model, optimizer, chief: bool, agree):
  """(state, best weights) of the chief's newest backup that loads, loaded on every
  worker; None when there is none. Raises on every worker when one cannot load it."""
  restored = store.restore(model, optimizer) if chief else None
  step = int(agree(restored[0].step if restored else -1))
  if step < 0:
    return None
  if not chief:
    restored = store.restore(model, optimizer, step=step)
  missing = int(_all_sum(strategy, 0 if restored else 1))
  if missing:
    raise RuntimeError(
        f'{missing} worker(s) could not load the chief\'s backup at step {step} in '
        f'{store.directory}: backup_dir must be storage every worker reads (the pipeline '
        'root, e.g. gs://...), not a directory on each machine')
  return restored


class _Backups:
  """The chief's step backups (BackupStore with this loop's own optimizer)."""

  def __init__(self, store: training.BackupStore, model, optimizer, clock: training.Clock):
    self.store, self._model, self._optimizer, self._clock = store, model, optimizer, clock

  def save(self, state: training.TrainingState, best_weights) -> None:
    state.elapsed_seconds = self._clock.elapsed()
    self.store.save(self._model, state, best_weights, optimizer=self._optimizer)


def _train(config, clock, model, per_epoch, eval_batches, train_iter, train_step, validate,
           agree, chief, vocab, model_config, log_dir, state, best_weights, backups):
  """The loop, from `state` on; returns (final eval loss, seconds spent in train steps).

  `backups`: the chief's _Backups (None on the other workers and when off).
  """
  budget = training.Budget(config.max_train_seconds, clock, eval_batches,
                           sample=config.sample_chars > 0 and chief)
  ceiling = config.divergence_loss_ratio * math.log(len(vocab))
  progress = training.Progress(config.progress_seconds, per_epoch * config.epochs,
                               config.epochs) if chief else None
  sampler = None
  if chief:
    sampler = trainer_module._SampleText(vocab, model_config, config.sample_prompt,  # pylint: disable=protected-access
                                         config.sample_chars, log_dir)
    sampler.set_model(model)
  summaries = _Summaries(log_dir)
  checkpoints = os.path.join(log_dir, 'checkpoints')

  def current_lr() -> float:
    done = training.training_progress(state.step, per_epoch * config.epochs, clock, budget)
    return training.learning_rate(config.learning_rate, config.lr_schedule, config.min_lr_ratio,
                                  done)

  def would_overrun(steps_ahead: int) -> bool:
    """Budget.exhausted() as it will be `steps_ahead` steps from now."""
    if budget.seconds is None:
      return False
    return (clock.elapsed() + (steps_ahead + 1) * (budget.step_seconds or 0.0)
            + budget.reserve() > budget.seconds)

  def diverged(loss: float, what: str) -> None:
    why = training.divergence(loss, ceiling)
    if why is not None:
      state.stop_reason = training.STOP_DIVERGED
      if progress:
        progress.close()
      raise training.TrainingDivergedError(
          f'training diverged at step {state.step} (epoch {state.epoch + 1}): {what} is '
          f'{why}; lower learning_rate (now {config.learning_rate:g}) or set clipnorm')

  loop_seconds = 0.0
  first = True
  try:
    while state.stop_reason is None and state.epoch < config.epochs:
      stop = False
      while state.batch_in_epoch < per_epoch and not stop:
        lr = current_lr()
        # The chief's proposal for this step: its rate, and whether to stop after
        # it (the single-process check after the step, made one step ahead).
        proposal = tf.constant([lr, 1.0 if would_overrun(1) else 0.0] if chief
                               else [0.0, 0.0], tf.float32)
        started = clock.now()
        loss, agreed = train_step(train_iter, proposal)
        loss, agreed = float(loss), agreed.numpy()
        seconds = clock.now() - started
        loop_seconds += seconds
        (budget.record_first_step if first else budget.record_step)(seconds)
        first = False
        state.step += 1
        state.batch_in_epoch += 1
        state.epoch_loss_sum += loss
        diverged(loss, 'loss')
        elapsed = clock.elapsed()
        state.add_step_point(loss, float(agreed[0]), elapsed)
        if agreed[1] > 0:
          logging.info('Time budget: stopping after step %d (%.0f s elapsed, %.0f s reserved '
                       'for the last validation, sample and export).', state.step, elapsed,
                       budget.reserve())
          state.stop_reason = training.STOP_TIME_BUDGET
          stop = True
        if progress:
          progress.step(elapsed, state.step, state.epoch,
                        state.epoch_loss_sum / state.batch_in_epoch, lr, elapsed,
                        budget.left())
        # The epoch's last step is backed up at the epoch's end, with its validation.
        if (backups and not stop and state.step % config.backup_every_steps == 0
            and state.batch_in_epoch < per_epoch):
          backups.save(state, best_weights)
      # The epoch's end (or a stop mid-epoch): validate, sample, record.
      started = clock.now()
      val_loss = validate()
      budget.record_eval(clock.now() - started)
      first = True   # the next step's time includes the switch back
      epoch = state.epoch
      loss = state.epoch_loss_sum / max(state.batch_in_epoch, 1)
      diverged(val_loss, 'validation loss')
      sample = ''
      if sampler is not None:
        sampler.on_epoch_end(epoch)
        sample = sampler.last_sample or ''
        budget.record_sample(sampler.last_seconds)
      elapsed = clock.elapsed()
      state.epochs.append({'epoch': epoch + 1, 'loss': loss, 'val_loss': val_loss,
                           'sample': sample, 'elapsed_seconds': elapsed})
      summaries.epoch(epoch + 1, loss, val_loss, float(agreed[0]))
      if chief:
        tf.io.gfile.makedirs(checkpoints)
        model.save_weights(os.path.join(checkpoints, f'ckpt_{epoch + 1:02d}.weights.h5'))
      if progress:
        left = budget.left()
        progress.message(f'epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}, val_loss '
                         f'{val_loss:.4f}, step {state.step}, {elapsed:.0f} s elapsed'
                         + ('' if left is None else f', {max(left, 0):.0f} s left'))
      if config.early_stopping_patience:
        if state.best_val_loss is None or val_loss < state.best_val_loss:
          state.best_val_loss, state.best_epoch, state.wait = val_loss, epoch + 1, 0
          best_weights = model.get_weights()
        else:
          state.wait += 1
          if state.wait >= config.early_stopping_patience and state.stop_reason is None:
            logging.info('Early stopping: val_loss has not improved for %d epochs (best '
                         '%.4f at epoch %d).', state.wait, state.best_val_loss,
                         state.best_epoch)
            state.stop_reason = training.STOP_EARLY_STOPPING
      state.epoch, state.batch_in_epoch, state.epoch_loss_sum = epoch + 1, 0, 0.0
      if state.stop_reason is None and state.epoch >= config.epochs:
        state.stop_reason = training.STOP_EPOCHS
      elif state.stop_reason is None and agree(1.0 if budget.exhausted() else 0.0) > 0:
        logging.info('Time budget: stopping after epoch %d (%.0f s elapsed).', epoch + 1,
                     elapsed)
        state.stop_reason = training.STOP_TIME_BUDGET
      if backups:
        backups.save(state, best_weights)
  except training.TrainingDivergedError as e:
    logging.error('%s', e)
    if chief:
      training.write_history(log_dir, state, config.max_train_seconds)
    if backups:
      backups.store.delete()   # the same settings would only diverge again
    raise
  finally:
    summaries.close()
    if progress:
      progress.close()
  state.stop_reason = state.stop_reason or training.STOP_EPOCHS

  eval_loss = training.final_eval_loss(model, state, best_weights, config.learning_rate)
  return eval_loss, loop_seconds
