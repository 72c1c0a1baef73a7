"""The Trainer's module: `run_fn` trains the char-RNN and exports the serving model.

What lands in the Model artifact (all of it is pushed, so a served model
carries what the next warm start needs):
  Format-Serving/                 the SavedModel TF Serving loads (core TF ops only)
    assets.extra/vocabulary.json  the ids it was trained with
    assets.extra/metrics.json     eval loss (nats/char), bits/char, training figures:
                                  train_steps, stop_reason (epochs | time_budget |
                                  early_stopping), resumed_from_step (0: not
                                  resumed), elapsed_seconds (run_fn's start to
                                  the end of the export), time_budget_seconds,
                                  precision with precision_reason and
                                  precision_timings_ms (`auto` measured: median ms
                                  per step of each candidate; null otherwise),
                                  config (what trained: rnn_units is the size
                                  chosen) with rnn_units_reason and
                                  rnn_units_step_ms (size by step time)
    assets.extra/keras/           Keras weights + config, for warm starts

And in ModelRun: TensorBoard logs (loss curves, a text sample after every
epoch), a weights checkpoint per epoch, as in the tutorial, and history.json
(per-step and per-epoch figures for the run report; training.write_history).

The settings arrive as the TrainingConfig that configs.py built (custom_config,
rebuilt strictly: no defaults here). Training is supervised by
training.TrainingMonitor: a diverged run raises TrainingDivergedError and
exports nothing; the time budget counts from the start of run_fn to the end of
the export; and step backups under custom_config['backup_dir'] (the executor
derives it from the input artifacts and the settings) let the next execution
with the same inputs continue where a killed one stopped.
"""

import json
import math
import os
import random
import time
from typing import Any, Dict, List, Optional

import keras
import tensorflow as tf
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from components import examples_format
from components import model as model_lib
from components import training
from components.text import CharVocab
from components.training_config import TrainingConfig

# Kept importable here for callers of the old module layout.
resolve_precision = training.resolve_precision
TrainingDivergedError = training.TrainingDivergedError

KERAS_DIR = 'keras'
WEIGHTS_FILE = 'model.weights.h5'
CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.json'


def make_dataset(file_patterns: List[str], seq_length: int, batch_size: int,
                 shuffle_buffer: int = 0, repeat: bool = False,
                 cache: bool = True, num_windows: Optional[int] = None,
                 random_offsets: bool = False, seed: Optional[int] = None,
                 skip_batches: int = 0) -> tf.data.Dataset:
  """(inputs, targets) batches of [batch, seq_length] ids from WindowGen's TFRecords.

  `random_offsets` (training only; needs WindowGen's stride == seq_length, so
  consecutive windows share one id and tile the text): each example is re-cut
  from two neighbouring windows at a random offset, so a window may start at any
  character, as in nanoGPT's sampling, and no epoch repeats the last one's
  windows. The model sees the same text per epoch but never the same 100-character
  cuts, which narrows the train/eval gap (bench/quality).

  A finite dataset carries its number of batches (from `num_windows`, or counted
  when not given): with an unknown cardinality, Keras 3.12 on TF 2.16 divides
  evaluate()'s and val_loss's sum by one batch too many (1.470 reported for a
  true 1.557 over 17 batches).

  `skip_batches` (repeated datasets only) starts the stream that many batches
  in: with a seed, exactly where an uninterrupted run would be after that many
  steps (same shuffles, same offsets), which is how a resumed run continues.
  """
  if skip_batches and not repeat:
    raise ValueError('skip_batches needs repeat=True (an endless stream to resume in)')
  files = tf.io.gfile.glob(file_patterns) if isinstance(file_patterns, str) else [
      f for p in file_patterns for f in tf.io.gfile.glob(p)]
  if not files:
    raise ValueError(f'no TFRecord files match {file_patterns}')
  if num_windows is None and not repeat:
    num_windows = int(examples_format.record_dataset(files).reduce(0, lambda n, _: n + 1))
  if random_offsets:
    # WindowGen names files by shard, so sorted files read one after another
    # give the windows in text order; pair each with its successor.
    ordered = examples_format.record_dataset(sorted(files))
    ds = tf.data.Dataset.zip((ordered, ordered.skip(1)))
    num_windows = None if num_windows is None else num_windows - 1
  else:
    ds = examples_format.record_dataset(sorted(files), num_parallel_reads=tf.data.AUTOTUNE)
  # The records are small (about 120 bytes a window): caching them in memory
  # removes decompression from every epoch after the first. Only for full
  # passes: a cache that is never read to the end is thrown away.
  if cache:
    ds = ds.cache()
  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  def parse(serialized):
    return examples_format.parse_windows(serialized, seq_length + 1)

  def split(serialized):
    ids = parse(serialized)
    return ids[:, :-1], ids[:, 1:]

  def recut(pair, random):
    first, second = parse(pair[0]), parse(pair[1])
    check = tf.debugging.assert_equal(
        first[:, -1], second[:, 0], message=(
            'random_offsets needs windows that tile the text (WindowGen stride == '
            'seq_length, files in text order); these do not'))
    with tf.control_dependencies([check]):
      text = tf.concat([first[:, :-1], second], axis=1)        # [batch, 2 * seq_length + 1]
    offsets = tf.cast(random % seq_length, tf.int32)[:, None]
    ids = tf.gather(text, offsets + tf.range(seq_length + 1), batch_dims=1)
    return ids[:, :-1], ids[:, 1:]

  if random_offsets:
    # Dataset.random draws new numbers every epoch, reproducibly under a seed.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(
        seed=seed, rerandomize_each_iteration=True)))
  ds = ds.batch(batch_size, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)   # before parsing: skipped batches are read, not parsed
  if not repeat:
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_windows // batch_size))
  return ds.map(recut if random_offsets else split,
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _SampleText(keras.callbacks.Callback):
  """Logs a generated sample after each epoch, like the tutorial's check-ins."""

  def __init__(self, vocab: CharVocab, model_config: Dict[str, Any], prompt: str,
               num_chars: int, log_dir: str):
    super().__init__()
    self._args = (vocab.tokens, model_config)
    self._prompt, self._num_chars = prompt, num_chars
    self._writer = tf.summary.create_file_writer(os.path.join(log_dir, 'samples'))
    self._sampler = self._generate = None
    self.last_sample: Optional[str] = None
    self.last_seconds = 0.0   # the budget counts it (the first one includes tracing)

  def on_epoch_end(self, epoch, logs=None):
    if not self._num_chars:
      return
    started = time.monotonic()
    if self._sampler is None:
      self._sampler = model_lib.CharRnnExport(self.model, *self._args,
                                              max_generate_chars=self._num_chars)
      self._generate = self._sampler.signatures()['generate']
    else:
      self._sampler.assign_from(self.model)
    out = self._generate(prompt=tf.constant([self._prompt]),
                         num_chars=tf.constant(self._num_chars),
                         temperature=tf.constant(1.0),
                         seed=tf.constant(epoch, tf.int64))
    sample = self._prompt + out['text'].numpy()[0].decode('utf-8')
    logging.info('Sample after epoch %d:\n%s', epoch + 1, sample)
    with self._writer.as_default():
      tf.summary.text('sample', sample, step=epoch + 1)
    self.last_sample = sample
    self.last_seconds = time.monotonic() - started


def _served_keras_config(base_model_dir: Optional[str]):
  """(the served model's {'tokens', 'model_config'}, or None, and why not)."""
  if not base_model_dir or not tf.io.gfile.exists(
      os.path.join(base_model_dir, 'saved_model.pb')):
    return None, 'no served model to warm-start from'
  try:
    with tf.io.gfile.GFile(os.path.join(base_model_dir, 'assets.extra', KERAS_DIR,
                                        CONFIG_FILE)) as f:
      return json.load(f), None
  except tf.errors.NotFoundError:
    return None, f'the served model has no assets.extra/{KERAS_DIR}/{CONFIG_FILE}'


def _warm_start(model: keras.Model, base_model_dir: Optional[str], vocab: CharVocab,
                model_config: Dict[str, Any]) -> str:
  """Loads the served model's Keras weights when they fit; says what it did."""
  base, why_not = _served_keras_config(base_model_dir)
  if base is None:
    return f'from scratch ({why_not})'
  if base['tokens'] != vocab.tokens:
    return 'from scratch (the vocabulary changed since the served model)'
  if base['model_config'] != model_config:
    return 'from scratch (the model architecture changed since the served model)'
  keras_dir = os.path.join(base_model_dir, 'assets.extra', KERAS_DIR)
  local = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'warm-{time.time_ns()}.weights.h5')
  tf.io.gfile.copy(os.path.join(keras_dir, WEIGHTS_FILE), local, overwrite=True)
  model.load_weights(local)
  os.remove(local)
  return f'warm-started from {keras_dir}'


def _size_without_timing(config: TrainingConfig, resuming: Optional[training.TrainingState],
                         base_model_dir: Optional[str],
                         vocab: CharVocab) -> Optional[training.SizeChoice]:
  """The size when nothing needs measuring, else None (choose_size decides).

  A resumed run keeps its backup's size; a run that can warm-start keeps the
  served model's size (its weights are worth more than a better-fitting size).
  """
  ladder = training.size_ladder(config.rnn_units, config.min_rnn_units)
  if len(ladder) == 1 or not config.min_budget_steps or config.max_train_seconds is None:
    return training.SizeChoice(config.rnn_units, 'rnn_units as set (size by step time is off)')
  if resuming is not None and resuming.rnn_units:
    return training.SizeChoice(resuming.rnn_units, 'the size of the run this one resumes')
  base, _ = _served_keras_config(base_model_dir)
  if base is not None and base['tokens'] == vocab.tokens:
    served = base['model_config'].get('rnn_units')
    if served in ladder and _model_config(config.sized(served)) == base['model_config']:
      return training.SizeChoice(served, 'the served model\'s size, to warm-start from it')
  return None


class _Schedule(keras.callbacks.Callback):
  """bench/quality/explore.py's schedule and time budget (the pipeline uses TrainingMonitor)."""

  def __init__(self, lr: float, schedule: str, min_ratio: float,
               total_steps: Optional[int], seconds: Optional[float]):
    super().__init__()
    self._lr, self._schedule, self._min_ratio = lr, schedule, min_ratio
    self._total_steps, self._seconds = total_steps, seconds
    self._start, self._step = None, 0

  def on_train_begin(self, logs=None):
    self._start = time.monotonic()

  def on_train_batch_end(self, batch, logs=None):
    self._step += 1
    elapsed = time.monotonic() - self._start
    if self._seconds and elapsed > self._seconds:
      self.model.stop_training = True
    progress = max(self._step / self._total_steps if self._total_steps else 0.0,
                   elapsed / self._seconds if self._seconds else 0.0)
    self.model.optimizer.learning_rate.assign(
        training.learning_rate(self._lr, self._schedule, self._min_ratio, progress))


def _build_model(config: TrainingConfig, vocab_size: int, model_config: Dict[str, Any],
                 precision: str, seed: int) -> keras.Model:
  """The compiled model under `precision`; the same initial weights for the same seed."""
  keras.utils.set_random_seed(seed)   # Python, NumPy and TF: weights, dropout
  # Layers take the dtype policy in force when they are built; restore the
  # global one straight after so nothing else in the process is affected.
  previous_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(precision)
  try:
    model = model_lib.build_keras_model(vocab_size, **model_config)
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
  model.compile(optimizer=model_lib.build_optimizer(config.learning_rate, config.clipnorm,
                                                   config.weight_decay),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def _variables(model: keras.Model) -> List[tf.Variable]:
  return model.variables + model.optimizer.variables


def _reset(model: keras.Model, values: List[Any], seed: int) -> None:
  """Weights, optimizer state and seeds back to `values` as built: training then
  starts exactly where an unmeasured run starts."""
  for variable, value in zip(_variables(model), values):
    variable.assign(value)
  model.reset_metrics()
  keras.utils.set_random_seed(seed)


def _timed_steps(config: TrainingConfig, train_files: List[str], num_train: Optional[int],
                 seed: int, models: Dict[str, keras.Model],
                 warmup: int = training.PRECISION_WARMUP_STEPS,
                 timed: int = training.PRECISION_TIMED_STEPS):
  """({name: median ms per step}, {name: first step's seconds}, {name: initial values}).

  Each model trains a few steps on real batches (the same input pipeline as
  fit, so fit reuses the traced train function), taking turns
  (training.time_steps); `_reset` then puts any of them back as built.
  """
  batches = iter(make_dataset(train_files, config.seq_length, config.batch_size, repeat=True,
                              cache=False, num_windows=num_train,
                              random_offsets=config.random_offsets, seed=seed))
  initial, first_step, steps = {}, {}, {}
  for name, model in models.items():
    model.optimizer.build(model.trainable_variables)
    initial[name] = [v.numpy() for v in _variables(model)]
    model.make_train_function()

    def step(model=model, name=name):
      started = time.perf_counter()
      logs = model.train_function(batches)
      float(logs['loss'])                    # the step is done
      first_step.setdefault(name, time.perf_counter() - started)
    steps[name] = step
  return training.time_steps(steps, warmup, timed), first_step, initial


def _time_candidates(config: TrainingConfig, vocab_size: int, model_config: Dict[str, Any],
                     seed: int, train_files: List[str], num_train: Optional[int]):
  """Each of training.AUTO_CANDIDATES built from `seed` and timed (`_timed_steps`):
  ({name: median ms per step}, {name: model}, {name: first step's seconds},
  {name: initial values})."""
  models = {p: _build_model(config, vocab_size, model_config, p, seed)
            for p in training.AUTO_CANDIDATES}
  timings, first_step, initial = _timed_steps(config, train_files, num_train, seed, models)
  return timings, models, first_step, initial


def _model_at_chosen_precision(config: TrainingConfig, vocab_size: int,
                               model_config: Dict[str, Any], seed: int,
                               train_files: List[str], num_train: Optional[int],
                               bf16_flags: Optional[List[str]] = None):
  """(PrecisionChoice, the compiled model, its first step's seconds or None).

  For `auto` on a CPU with native bf16, each candidate is built from the same
  seed and timed (`_timed_steps`); the winner is put back as it was built.
  `bf16_flags` (tests) stands for the CPU's native bf16 flags.
  """
  measured = {}

  def time_candidates() -> Dict[str, float]:
    timings, models, first_step, initial = _time_candidates(
        config, vocab_size, model_config, seed, train_files, num_train)
    measured.update(models=models, first_step=first_step, initial=initial)
    return timings

  choice = training.choose_precision(config.precision, time_candidates, bf16_flags=bf16_flags)
  if not measured:
    return choice, _build_model(config, vocab_size, model_config, choice.precision, seed), None
  model = measured['models'][choice.precision]
  _reset(model, measured['initial'][choice.precision], seed)
  return choice, model, measured['first_step'][choice.precision]


def _model_at_chosen_size(config: TrainingConfig, vocab_size: int, seed: int,
                          train_files: List[str], num_train: Optional[int],
                          precision: training.PrecisionChoice, model: keras.Model,
                          first_step: Optional[float], clock: training.Clock):
  """(SizeChoice, model, first step's seconds or None) for size by step time.

  `model` is the largest size, built at the chosen precision. Its step time is
  the precision measurement's when there was one, else a few steps are timed
  here (~4 steps). Kept when it buys enough steps; otherwise the size
  training.choose_size predicts is built (its first step traces in fit).
  """
  step_ms = (precision.timings_ms or {}).get(precision.precision)
  if step_ms is None:
    timings, first, initial = _timed_steps(config, train_files, num_train, seed,
                                           {'largest': model}, training.SIZE_WARMUP_STEPS,
                                           training.SIZE_TIMED_STEPS)
    step_ms, first_step = timings['largest'], first['largest']
    _reset(model, initial['largest'], seed)
  ladder = training.size_ladder(config.rnn_units, config.min_rnn_units)
  choice = training.choose_size(
      ladder, step_ms, config.max_train_seconds - clock.elapsed(), config.min_budget_steps,
      lambda units: training.step_cost(units, config.rnn_type, config.num_layers,
                                       config.embedding_dim, vocab_size))
  if choice.rnn_units == config.rnn_units:
    return choice, model, first_step
  sized = config.sized(choice.rnn_units)
  return choice, _build_model(sized, vocab_size, _model_config(sized), precision.precision,
                              seed), None


def _model_config(config: TrainingConfig) -> Dict[str, Any]:
  return {k: getattr(config, k) for k in model_lib.MODEL_CONFIG_KEYS}


def steps_per_epoch(config: TrainingConfig, num_windows: Optional[int],
                    train_files: List[str]) -> int:
  """config.steps_per_epoch, or the batches of one pass over the train split."""
  if config.steps_per_epoch:
    return config.steps_per_epoch
  if num_windows is None:
    num_windows = int(examples_format.record_dataset(
        [f for p in train_files for f in tf.io.gfile.glob(p)]).reduce(0, lambda n, _: n + 1))
  usable = num_windows - 1 if config.random_offsets else num_windows
  steps = usable // config.batch_size
  if steps < 1:
    raise ValueError(f'the train split has {num_windows} windows, fewer than one batch of '
                     f'batch_size={config.batch_size}: lower batch_size or use a larger corpus')
  return steps


def _eval_batches(config: TrainingConfig, num_windows: Optional[int]) -> int:
  if config.eval_steps:
    return config.eval_steps
  return (num_windows or 0) // config.batch_size


def _save_keras_weights(model: keras.Model, vocab: CharVocab, model_config: Dict[str, Any],
                        extra: str) -> None:
  keras_dir = os.path.join(extra, KERAS_DIR)
  tf.io.gfile.makedirs(keras_dir)
  local = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'save-{time.time_ns()}.weights.h5')
  model.save_weights(local)   # h5 needs a local file; the artifact may be on gs://
  tf.io.gfile.copy(local, os.path.join(keras_dir, WEIGHTS_FILE), overwrite=True)
  os.remove(local)
  with tf.io.gfile.GFile(os.path.join(keras_dir, CONFIG_FILE), 'w') as f:
    f.write(json.dumps({'tokens': vocab.tokens, 'model_config': model_config}))


def _matching(patterns: List[str]) -> List[str]:
  return sorted(f for p in patterns for f in tf.io.gfile.glob(p))


def run_fn(fn_args: FnArgs) -> None:
  # TF_CONFIG naming several workers (Vertex AI, a TFJob): data-parallel training.
  from components import multiworker  # pylint: disable=g-import-not-at-top
  cluster = multiworker.cluster_from_env()
  if cluster is not None and cluster.is_multi_worker:
    return multiworker.run(fn_args, cluster)
  clock = training.Clock()   # the time budget counts from here
  custom = fn_args.custom_config
  config = TrainingConfig.from_custom_config(custom)
  vocab = CharVocab.load(custom['vocabulary_uri'])
  # Every record is read once up front: a truncated or corrupted shard stops the run
  # here, naming the file, instead of training on part of the data.
  num_train = examples_format.count_records(
      _matching(fn_args.train_files), custom.get('num_windows_train'))
  num_eval = examples_format.count_records(
      _matching(fn_args.eval_files), custom.get('num_windows_eval'))
  per_epoch = steps_per_epoch(config, num_train, fn_args.train_files)

  seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
  store = None
  if config.backup_every_steps and custom.get('backup_dir'):
    store = training.BackupStore(custom['backup_dir'])
  size = _size_without_timing(config, store.newest_state() if store else None,
                              fn_args.base_model, vocab)
  if size is not None:
    config = config.sized(size.rnn_units)
  # `auto` times a few steps of each candidate here (inside the budget) and keeps
  # the faster model, its first (tracing) step and its compiled train function.
  choice, model, first_step_seconds = _model_at_chosen_precision(
      config, len(vocab), _model_config(config), seed, fn_args.train_files, num_train)
  precision = choice.precision
  logging.info('Compute precision: %s (%s)', precision, choice.reason)
  if size is None:
    # Size by step time: the same kind of measurement, inside the budget.
    size, model, first_step_seconds = _model_at_chosen_size(
        config, len(vocab), seed, fn_args.train_files, num_train, choice, model,
        first_step_seconds, clock)
    config = config.sized(size.rnn_units)
  # From here `config` is what trains: metrics.json's config says the size trained.
  model_config = _model_config(config)
  logging.info('Model size: %d units (%s)', config.rnn_units, size.reason)

  restored = store.restore(model) if store else None
  if restored:
    state, best_weights, start_note = store.resumed(restored, clock)
  else:
    best_weights = None
    state = training.TrainingState(seed=seed, rnn_units=config.rnn_units)
    start_note = _warm_start(model, fn_args.base_model, vocab, model_config)
  logging.info('Training %s', start_note)
  model.summary(print_fn=logging.info)

  eval_ds = make_dataset(fn_args.eval_files, config.seq_length, config.batch_size,
                         cache=config.eval_steps is None, num_windows=num_eval)
  budget = training.Budget(config.max_train_seconds, clock, _eval_batches(config, num_eval),
                           sample=config.sample_chars > 0)
  if first_step_seconds is not None:
    # The precision measurement traced the train function fit will use: its
    # first step stands for the traces still to come (validation, sample, export).
    budget.record_first_step(first_step_seconds)
  sampler = _SampleText(vocab, model_config, config.sample_prompt, config.sample_chars,
                        fn_args.model_run_dir)
  monitor = training.TrainingMonitor(
      state, clock, budget, learning_rate=config.learning_rate,
      lr_schedule=config.lr_schedule, min_lr_ratio=config.min_lr_ratio,
      steps_per_epoch=per_epoch, epochs=config.epochs,
      # A uniform guess scores ln(vocabulary size) nats/char.
      divergence_ceiling=config.divergence_loss_ratio * math.log(len(vocab)),
      early_stopping_patience=config.early_stopping_patience,
      backup_every_steps=config.backup_every_steps, store=store,
      progress=training.Progress(config.progress_seconds, per_epoch * config.epochs,
                                 config.epochs),
      sampler=sampler, best_weights=best_weights)
  callbacks = [
      keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq='epoch'),
      keras.callbacks.ModelCheckpoint(
          os.path.join(fn_args.model_run_dir, 'checkpoints', 'ckpt_{epoch:02d}.weights.h5'),
          save_weights_only=True),
      sampler,    # before the monitor: each epoch's record holds its sample
      monitor,
  ]

  def fit(epochs: int, steps: int) -> None:
    # A fresh stream that starts where the state is: same data as an
    # uninterrupted run from this step on.
    train_ds = make_dataset(fn_args.train_files, config.seq_length, config.batch_size,
                            shuffle_buffer=config.shuffle_buffer, repeat=True,
                            cache=config.steps_per_epoch is None, num_windows=num_train,
                            random_offsets=config.random_offsets, seed=state.seed,
                            skip_batches=state.step)
    model.fit(train_ds, initial_epoch=state.epoch, epochs=epochs, steps_per_epoch=steps,
              validation_data=eval_ds, validation_steps=config.eval_steps,
              callbacks=callbacks, verbose=0)

  try:
    if state.stop_reason is None and state.batch_in_epoch:
      # Killed mid-epoch: finish that epoch first, then the rest.
      fit(state.epoch + 1, per_epoch - state.batch_in_epoch)
    if state.stop_reason is None and state.epoch < config.epochs:
      fit(config.epochs, per_epoch)
  except training.TrainingDivergedError as e:
    logging.error('%s', e)
    training.write_history(fn_args.model_run_dir, state, config.max_train_seconds)
    if store:
      store.delete()   # the same settings would only diverge again
    raise
  state.stop_reason = state.stop_reason or training.STOP_EPOCHS
  train_seconds = clock.elapsed()

  eval_loss = training.final_eval_loss(model, state, monitor.best_weights,
                                       config.learning_rate)

  metrics = export(fn_args, model, vocab, model_config, config, state, clock, {
      'train_seconds': train_seconds,              # run_fn's start to training's end
      'resumed_from_step': state.resumed_from_step,
      'start': start_note,
      'precision': precision,
      'precision_reason': choice.reason,
      'precision_timings_ms': choice.timings_ms,   # null when not measured
      'rnn_units_reason': size.reason,             # size by step time (config.rnn_units)
      'rnn_units_step_ms': size.step_ms,           # measured largest, predicted others
  }, eval_loss)
  if store:
    store.delete()
  logging.info('Eval loss %.4f nats/char (%.4f bits/char) after %d steps (%s, %.0f s); '
               'model exported to %s', eval_loss, metrics['bits_per_char'], state.step,
               state.stop_reason, metrics['elapsed_seconds'], fn_args.serving_model_dir)


def write_serving_model(serving_dir: str, model: keras.Model, vocab: CharVocab,
                        model_config: Dict[str, Any], config: TrainingConfig) -> str:
  """The SavedModel, its vocabulary and the Keras weights (the module docstring's
  layout, less metrics.json) under `serving_dir`; returns its assets.extra."""
  model_lib.export_serving_model(model, vocab.tokens, model_config,
                                 config.max_generate_chars, serving_dir,
                                 config.serving_matmul_dtype)
  extra = os.path.join(serving_dir, 'assets.extra')
  tf.io.gfile.makedirs(extra)
  vocab.save(extra)
  _save_keras_weights(model, vocab, model_config, extra)
  return extra


def export(fn_args: FnArgs, model: keras.Model, vocab: CharVocab, model_config: Dict[str, Any],
           config: TrainingConfig, state: training.TrainingState, clock: training.Clock,
           figures: Dict[str, Any], eval_loss: float) -> Dict[str, Any]:
  """Writes the Model artifact (the module docstring's layout) and history.json;
  returns metrics.json's content: the figures every run reports, then the
  caller's own (`figures`: how it started, precision, a multi-worker run's
  throughput). The one writer of metrics.json, for both training paths."""
  started, cpu_started = clock.elapsed(), time.process_time()
  extra = write_serving_model(fn_args.serving_model_dir, model, vocab, model_config, config)
  written, cpu_written = clock.elapsed(), time.process_time()
  training.write_history(fn_args.model_run_dir, state, config.max_train_seconds)
  # How long the writing took: a run that overran its budget shows here whether
  # the export was the part that ran long (twice 33-34 s against the usual < 3 s,
  # on Zen 5). Its CPU time (every thread of the process) tells work from waiting:
  # near the wall time or above, the export itself computed; far below, it waited
  # (on the disk, or on a host that was not running it).
  export_figures = {'export_seconds': written - started,
                    'export_cpu_seconds': cpu_written - cpu_started,
                    'history_seconds': clock.elapsed() - written}
  metrics = {
      'eval_loss': eval_loss,                      # nats per character
      'bits_per_char': eval_loss / math.log(2),
      'perplexity': math.exp(min(eval_loss, 700.0)),
      'epochs_run': len(state.epochs),
      'train_steps': state.step,
      'stop_reason': state.stop_reason,
      'stopped_by_time_budget': state.stop_reason == training.STOP_TIME_BUDGET,
      'time_budget_seconds': config.max_train_seconds,
      'history': {'loss': [e['loss'] for e in state.epochs],
                  'val_loss': [e['val_loss'] for e in state.epochs]},
      'seed': state.seed,
      'vocab_size': len(vocab),
      'corpus': fn_args.custom_config.get('corpus'),   # sources, num_chars, fingerprint
      'state_size': model_lib.state_size(config.rnn_type, config.rnn_units, config.num_layers),
      'config': config.to_custom_config(),
      **export_figures,
      **figures,
  }
  # Last: everything above is inside the budget this figure reports.
  metrics['elapsed_seconds'] = clock.elapsed()
  with tf.io.gfile.GFile(os.path.join(extra, METRICS_FILE), 'w') as f:
    f.write(json.dumps(metrics, indent=1))
  return metrics
