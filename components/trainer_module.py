"""The Trainer's module: `run_fn` trains the char-RNN and exports the serving model.

What lands in the Model artifact (all of it is pushed, so a served model
carries what the next warm start needs):
  Format-Serving/                 the SavedModel TF Serving loads (core TF ops only)
    assets.extra/vocabulary.json  the ids it was trained with
    assets.extra/metrics.json     eval loss (nats/char), bits/char, training figures
    assets.extra/keras/           Keras weights + config, for warm starts

And in ModelRun: TensorBoard logs (loss curves, a text sample after every
epoch) and a weights checkpoint per epoch, as in the tutorial.
"""

import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import keras
import tensorflow as tf
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from components import model as model_lib
from components.text import CharVocab
from components import examples_format

KERAS_DIR = 'keras'
WEIGHTS_FILE = 'model.weights.h5'
CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.json'


def make_dataset(file_patterns: List[str], seq_length: int, batch_size: int,
                 shuffle_buffer: int = 0, repeat: bool = False,
                 cache: bool = True, num_windows: Optional[int] = None,
                 random_offsets: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
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
  """
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
  if not repeat:
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_windows // batch_size))
  return ds.map(recut if random_offsets else split,
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _Schedule(keras.callbacks.Callback):
  """Time budget and learning-rate schedule, checked after every batch.

  Training stops once `seconds` have passed. With `cosine`, the learning rate
  decays from `lr` to `lr * min_ratio` over whichever comes first, the step
  count or the time budget, so a time-limited run still ends annealed.
  """

  def __init__(self, lr: float, schedule: str, min_ratio: float,
               total_steps: Optional[int], seconds: Optional[float]):
    super().__init__()
    self._lr, self._schedule, self._min_ratio = lr, schedule, min_ratio
    self._total_steps, self._seconds = total_steps, seconds
    self._start, self._step = None, 0
    self.stopped_after_steps: Optional[int] = None   # set when the budget stopped training

  @property
  def steps(self) -> int:
    return self._step

  def on_train_begin(self, logs=None):
    self._start = time.monotonic()

  def on_train_batch_end(self, batch, logs=None):
    self._step += 1
    elapsed = time.monotonic() - self._start
    if self._seconds and elapsed > self._seconds and self.stopped_after_steps is None:
      logging.warning('Time budget of %.0f s reached after %d steps; stopping.',
                      self._seconds, self._step)
      self.stopped_after_steps = self._step
      self.model.stop_training = True
    if self._schedule == 'cosine':
      progress = max(self._step / self._total_steps if self._total_steps else 0.0,
                     elapsed / self._seconds if self._seconds else 0.0)
      cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
      self.model.optimizer.learning_rate.assign(
          self._lr * (self._min_ratio + (1 - self._min_ratio) * cosine))


class _SampleText(keras.callbacks.Callback):
  """Logs a generated sample after each epoch, like the tutorial's check-ins."""

  def __init__(self, vocab: CharVocab, model_config: Dict[str, Any], prompt: str,
               num_chars: int, log_dir: str):
    super().__init__()
    self._args = (vocab.tokens, model_config)
    self._prompt, self._num_chars = prompt, num_chars
    self._writer = tf.summary.create_file_writer(os.path.join(log_dir, 'samples'))
    self._sampler = self._generate = None

  def on_epoch_end(self, epoch, logs=None):
    if not self._num_chars:
      return
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


def _warm_start(model: keras.Model, base_model_dir: Optional[str], vocab: CharVocab,
                model_config: Dict[str, Any]) -> str:
  """Loads the served model's Keras weights when they fit; says what it did."""
  if not base_model_dir or not tf.io.gfile.exists(
      os.path.join(base_model_dir, 'saved_model.pb')):
    return 'from scratch (no served model to warm-start from)'
  keras_dir = os.path.join(base_model_dir, 'assets.extra', KERAS_DIR)
  try:
    with tf.io.gfile.GFile(os.path.join(keras_dir, CONFIG_FILE)) as f:
      base = json.load(f)
  except tf.errors.NotFoundError:
    return f'from scratch (the served model has no assets.extra/{KERAS_DIR}/{CONFIG_FILE})'
  if base['tokens'] != vocab.tokens:
    return 'from scratch (the vocabulary changed since the served model)'
  if base['model_config'] != model_config:
    return 'from scratch (the model architecture changed since the served model)'
  local = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'warm-{time.time_ns()}.weights.h5')
  tf.io.gfile.copy(os.path.join(keras_dir, WEIGHTS_FILE), local, overwrite=True)
  model.load_weights(local)
  os.remove(local)
  return f'warm-started from {keras_dir}'


def resolve_precision(precision: str) -> str:
  """`auto`: bfloat16 compute on CPUs with native bf16 (AVX512-BF16, AMX), else float32."""
  if precision != 'auto':
    return precision
  if tf.config.list_physical_devices('GPU'):
    return 'float32'
  try:
    with open('/proc/cpuinfo') as f:
      flags = f.read()
  except OSError:
    return 'float32'
  return 'mixed_bfloat16' if ('avx512_bf16' in flags or 'amx_bf16' in flags) else 'float32'


def run_fn(fn_args: FnArgs) -> None:
  cfg = fn_args.custom_config
  vocab = CharVocab.load(cfg['vocabulary_uri'])
  seq_length, batch_size = cfg['seq_length'], cfg['batch_size']
  model_config = {k: cfg[k] for k in model_lib.MODEL_CONFIG_KEYS}

  seed = cfg.get('seed')
  if seed is not None:
    keras.utils.set_random_seed(seed)   # Python, NumPy and TF: weights, dropout
  steps_per_epoch = cfg.get('steps_per_epoch')
  train_ds = make_dataset(fn_args.train_files, seq_length, batch_size,
                          shuffle_buffer=cfg['shuffle_buffer'],
                          repeat=steps_per_epoch is not None,
                          cache=steps_per_epoch is None,
                          num_windows=cfg.get('num_windows_train'),
                          random_offsets=cfg.get('random_offsets', False), seed=seed)
  eval_ds = make_dataset(fn_args.eval_files, seq_length, batch_size,
                         cache=cfg.get('eval_steps') is None,
                         num_windows=cfg.get('num_windows_eval'))

  # Layers take the dtype policy in force when they are built; restore the
  # global one straight after so nothing else in the process is affected.
  previous_policy = keras.mixed_precision.global_policy()
  precision = resolve_precision(cfg.get('precision', 'float32'))
  logging.info('Compute precision: %s', precision)
  keras.mixed_precision.set_global_policy(precision)
  try:
    model = model_lib.build_keras_model(len(vocab), **model_config)
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
  start_note = _warm_start(model, fn_args.base_model, vocab, model_config)
  logging.info('Training %s', start_note)
  model.compile(optimizer=keras.optimizers.Adam(cfg['learning_rate'],
                                                clipnorm=cfg.get('clipnorm') or None),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.summary(print_fn=logging.info)

  schedule = _Schedule(cfg['learning_rate'], cfg.get('lr_schedule', 'constant'),
                       cfg.get('min_lr_ratio', 0.1),
                       steps_per_epoch * cfg['epochs'] if steps_per_epoch else None,
                       cfg.get('max_train_seconds'))
  callbacks = [
      keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq='epoch'),
      keras.callbacks.ModelCheckpoint(
          os.path.join(fn_args.model_run_dir, 'checkpoints', 'ckpt_{epoch:02d}.weights.h5'),
          save_weights_only=True),
      schedule,
      _SampleText(vocab, model_config, cfg['sample_prompt'], cfg['sample_chars'],
                  fn_args.model_run_dir),
  ]
  if cfg.get('early_stopping_patience'):
    callbacks.append(keras.callbacks.EarlyStopping(
        monitor='val_loss', patience=cfg['early_stopping_patience'],
        restore_best_weights=True))

  started = time.monotonic()
  history = model.fit(train_ds, epochs=cfg['epochs'], steps_per_epoch=steps_per_epoch,
                      validation_data=eval_ds, validation_steps=cfg.get('eval_steps'),
                      callbacks=callbacks, verbose=2)
  train_seconds = time.monotonic() - started
  eval_loss = float(model.evaluate(eval_ds, steps=cfg.get('eval_steps'), verbose=0))

  serving_dir = fn_args.serving_model_dir
  model_lib.export_serving_model(model, vocab.tokens, model_config,
                                 cfg['max_generate_chars'], serving_dir,
                                 cfg.get('serving_matmul_dtype', 'float32'))
  extra = os.path.join(serving_dir, 'assets.extra')
  tf.io.gfile.makedirs(extra)
  vocab.save(extra)
  metrics = {
      'eval_loss': eval_loss,                      # nats per character
      'bits_per_char': eval_loss / math.log(2),
      'perplexity': math.exp(eval_loss),
      'epochs_run': len(history.epoch),
      'train_seconds': train_seconds,
      'train_steps': schedule.steps,
      'stopped_by_time_budget': schedule.stopped_after_steps is not None,
      'history': {k: [float(v) for v in vs] for k, vs in history.history.items()},
      'start': start_note,
      'precision': precision,
      'vocab_size': len(vocab),
      'state_size': model_lib.state_size(model_config['rnn_type'],
                                         model_config['rnn_units'],
                                         model_config['num_layers']),
      'config': {k: v for k, v in cfg.items() if k != 'vocabulary_uri'},
  }
  with tf.io.gfile.GFile(os.path.join(extra, METRICS_FILE), 'w') as f:
    f.write(json.dumps(metrics, indent=1))

  keras_dir = os.path.join(extra, KERAS_DIR)
  tf.io.gfile.makedirs(keras_dir)
  local = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'save-{time.time_ns()}.weights.h5')
  model.save_weights(local)   # h5 needs a local file; the artifact may be on gs://
  tf.io.gfile.copy(local, os.path.join(keras_dir, WEIGHTS_FILE), overwrite=True)
  os.remove(local)
  with tf.io.gfile.GFile(os.path.join(keras_dir, CONFIG_FILE), 'w') as f:
    f.write(json.dumps({'tokens': vocab.tokens, 'model_config': model_config}))
  logging.info('Eval loss %.4f nats/char (%.4f bits/char); model exported to %s',
               eval_loss, metrics['bits_per_char'], serving_dir)
