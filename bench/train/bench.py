"""Training throughput and quality: the pipeline's Trainer vs the TF tutorial, same run.

  .venv/bin/python -m bench.train                       # full: tutorial size, ~12-15 min on 2 shared cores
  .venv/bin/python -m bench.train --rnn_units=128 --embedding_dim=32 --chunk=3 \
      --rounds=1 --warmup=1 --eval_batches=2 --xla_chunk=2   # smoke, ~1 min
  .venv/bin/python -m bench.train overhead [--quick]    # the Trainer's whole step vs a bare
                                                        # Keras loop (bench/train/overhead.py)

Sides (all at the same batch and sequence length unless the name says otherwise):
  tutorial           the tutorial's own code: subclassed `MyModel` (Embedding,
                     GRU(return_sequences, return_state), Dense), `model.fit` over
                     its in-memory tf.data pipeline (StringLookup ids,
                     from_tensor_slices -> batch(101) -> map(split_input_target)
                     -> shuffle(10000) -> batch(64) -> prefetch)
  trainer_fp32       `components.trainer_module.make_dataset` over WindowGen's
                     TFRecords + `components.model.build_keras_model`, float32
  trainer_bf16       the same under the `mixed_bfloat16` policy
  trainer_bf16_b128  ... with batch 128 (half the steps, the same characters)
  trainer_*_lr2x     ... with Adam's learning rate doubled (2e-3)
  trainer_*_xla      ... compiled with `jit_compile=True` (fewer steps: slow)
  trainer_*_hoisted  ... with the GRU's input projection hoisted out of the time
                     loop (bench/train/hoisted.py: same maths, a candidate change)

Both sides train on the same characters (the first 90% of the corpus, the
pipeline's train split; WindowGen with stride 101 cuts exactly the tutorial's
non-overlapping 101-character chunks) and are scored on the same eval windows
(WindowGen's eval split) after the same number of training characters.

Timing: after `--warmup` steps each (tracing), the sides take turns, `--rounds`
times, running `model.fit` for `--chunk` steps; the first step of every chunk
(a fresh iterator: shuffle-buffer fill) is not timed. Rotating the order each
round spreads the other users' load over all sides. Speeds are reported three
ways: total (chars / summed step time), median step, and 10th-percentile step
(the least disturbed steps: the most robust estimate on a shared machine).
"""

import argparse
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

FLOP_NOTE = ('forward FLOPs/char = 2*(embedding+units)*3*units (GRU input and recurrent '
             'matmuls) + 2*units*vocab (Dense); training = 3x forward (backward = 2x)')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--corpus', default=common.CORPUS_PATH)
  p.add_argument('--rnn_units', type=int, default=1024)
  p.add_argument('--embedding_dim', type=int, default=256)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--seq_length', type=int, default=100)
  p.add_argument('--warmup', type=int, default=2, help='untimed steps per side first')
  p.add_argument('--chunk', type=int, default=8,
                 help='steps per side per round at --batch_size (first one untimed)')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--xla_chunk', type=int, default=4,
                 help='steps per round for the jit_compile sides (0: skip them)')
  p.add_argument('--eval_batches', type=int, default=0, help='0: the whole eval split')
  p.add_argument('--variants', default='tutorial,trainer_fp32,trainer_bf16,trainer_bf16_b128,'
                 'trainer_bf16_b128_lr2x,trainer_bf16_hoisted,trainer_fp32_xla,trainer_bf16_xla')
  p.add_argument('--input_batches', type=int, default=150,
                 help='batches per input-pipeline-only measurement (0: skip)')
  p.add_argument('--matmul_seconds', type=float, default=3.0,
                 help='per dtype, for the measured matmul peak (0: skip)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--workdir', default=None, help='default: a fresh temp dir')
  p.add_argument('--output', default=os.path.join(common.RESULTS_DIR, 'train.json'))
  return p.parse_args(argv)


# ------------------------------------------------------------ the tutorial
def tutorial_dataset(text: str, vocab: List[str], seq_length: int, batch_size: int):
  """The tutorial's input pipeline, verbatim but for the text it is given."""
  import tensorflow as tf
  ids_from_chars = tf.keras.layers.StringLookup(vocabulary=list(vocab), mask_token=None)
  all_ids = ids_from_chars(tf.strings.unicode_split(text, 'UTF-8'))
  ids_dataset = tf.data.Dataset.from_tensor_slices(all_ids)
  sequences = ids_dataset.batch(seq_length + 1, drop_remainder=True)

  def split_input_target(sequence):
    input_text = sequence[:-1]
    target_text = sequence[1:]
    return input_text, target_text

  dataset = sequences.map(split_input_target)
  BUFFER_SIZE = 10000  # pylint: disable=invalid-name
  dataset = (
      dataset
      .shuffle(BUFFER_SIZE)
      .batch(batch_size, drop_remainder=True)
      .prefetch(tf.data.experimental.AUTOTUNE))
  return dataset, len(ids_from_chars.get_vocabulary())


def tutorial_model(vocab_size: int, embedding_dim: int, rnn_units: int):
  """The tutorial's `MyModel` (bench/tutorial.py), compiled as the tutorial does."""
  import tensorflow as tf
  from bench.tutorial import MyModel

  model = MyModel(vocab_size, embedding_dim, rnn_units)
  loss = tf.losses.SparseCategoricalCrossentropy(from_logits=True)
  model.compile(optimizer='adam', loss=loss)
  return model


# ------------------------------------------------------------------ sides
class Side:
  """One model + dataset being timed; remembers its step times."""

  def __init__(self, name: str, model, dataset, batch_size: int, chunk: int,
               precision: str, xla: bool):
    self.name, self.model, self.dataset = name, model, dataset
    self.batch_size, self.chunk, self.precision, self.xla = batch_size, chunk, precision, xla
    self.step_seconds: List[float] = []
    self.steps_trained = 0
    self.last_loss: Optional[float] = None
    self.warmup_seconds = 0.0

  def fit(self, steps: int, timed: bool) -> None:
    import keras
    stamps = []

    class Stamp(keras.callbacks.Callback):
      def on_train_batch_end(self, batch, logs=None):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    history = self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                             callbacks=[Stamp()])
    self.steps_trained += steps
    self.last_loss = float(history.history['loss'][-1])
    if timed:
      self.step_seconds.extend(np.diff(stamps).tolist())   # drops the first step
    else:
      self.warmup_seconds += time.perf_counter() - t0


def build_sides(args, names: List[str], workdir: str, text: str, vocab: List[str],
                boundary: int) -> List[Side]:
  import keras
  import tensorflow as tf
  from components import model as model_lib
  from components import trainer_module
  from bench.windowing import stages

  sides = []
  train_files = stages.split_files(workdir, 'train')
  for name in names:
    keras.utils.set_random_seed(args.seed)
    batch = 128 if '_b128' in name else args.batch_size
    if (args.chunk * args.batch_size) % batch:
      raise SystemExit(f'--chunk * --batch_size must be a multiple of {batch} for {name}')
    xla = name.endswith('_xla')
    chunk = (args.xla_chunk if xla else args.chunk) * args.batch_size // batch
    if name == 'tutorial':
      dataset, vocab_size = tutorial_dataset(text[:boundary], vocab, args.seq_length, batch)
      model = tutorial_model(vocab_size, args.embedding_dim, args.rnn_units)
      precision = 'float32'
    elif name.startswith('trainer_'):
      precision = 'mixed_bfloat16' if '_bf16' in name else 'float32'
      dataset = trainer_module.make_dataset(train_files, args.seq_length, batch,
                                            shuffle_buffer=10_000, repeat=True, cache=False)
      previous = keras.mixed_precision.global_policy()
      keras.mixed_precision.set_global_policy(precision)
      try:
        model = model_lib.build_keras_model(len(vocab) + 1, args.embedding_dim, 'gru',
                                            args.rnn_units, 1, 0.0)
        if '_hoisted' in name:
          # Same initial weights as the other sides (same seed), rearranged: the
          # two models then compute the same function from the first step on.
          from bench.train import hoisted
          reference = model
          model = hoisted.build_keras_model(len(vocab) + 1, args.embedding_dim, args.rnn_units)
          hoisted.copy_weights(reference, model)
      finally:
        keras.mixed_precision.set_global_policy(previous)
      lr = 2e-3 if '_lr2x' in name else 1e-3
      model.compile(optimizer=keras.optimizers.Adam(lr),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    jit_compile=xla)
    else:
      raise SystemExit(f'unknown variant {name!r}')
    sides.append(Side(name, model, dataset, batch, chunk, precision, xla))
  return sides


# ------------------------------------------------------------------- eval
def eval_batches(workdir: str, seq_length: int, batch_size: int, limit: int):
  from components import trainer_module
  from bench.windowing import stages
  ds = trainer_module.make_dataset(stages.split_files(workdir, 'eval'), seq_length,
                                   batch_size, cache=False)
  if limit:
    ds = ds.take(limit)
  return [(x.numpy(), y.numpy()) for x, y in ds]


def eval_loss(model, batches) -> float:
  import tensorflow as tf

  @tf.function
  def batch_loss(x, y):
    logits = tf.cast(model(x, training=False), tf.float32)
    return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True))

  return float(np.mean([batch_loss(x, y).numpy() for x, y in batches]))


# -------------------------------------------------------- machine limits
def flops_per_char(embedding_dim: int, units: int, vocab_size: int) -> Dict[str, float]:
  forward = 2 * (embedding_dim + units) * 3 * units + 2 * units * vocab_size
  return {'forward': float(forward), 'train': 3.0 * forward}


def nominal_peak(machine: Dict[str, Any]) -> Dict[str, Any]:
  """cores x clock x FLOPs/cycle. Zen 4 (this EPYC) runs AVX-512 on two 256-bit FMA
  pipes: 16 fp32 FMAs = 32 FLOP/cycle/core; AVX512-BF16 dot products double that."""
  ghz = (machine.get('cpu_mhz') or 0) / 1000
  cores = machine.get('cores') or 1
  fp32 = cores * ghz * 32
  return {'fp32_gflops': round(fp32, 1), 'bf16_gflops': round(2 * fp32, 1),
          'basis': f'{cores} cores x {ghz:.2f} GHz (the clock /proc/cpuinfo reports: base, '
                   'under KVM; a matmul measured above this shows the cores boost higher) '
                   'x 32 FLOP/cycle (2x 256-bit FMA pipes, fp32); x2 for bf16 dot products '
                   '(VDPBF16PS)'}


def measured_matmul_peak(seconds: float, n: int = 2048) -> Dict[str, float]:
  """GFLOP/s of an n x n matmul, fp32 and bf16, as TF (oneDNN/Eigen) runs it here."""
  import tensorflow as tf
  out = {}
  for dtype in (tf.float32, tf.bfloat16):
    a = tf.random.normal([n, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    mm(a, b).numpy()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
      mm(a, b).numpy()
      count += 1
    out[f'{dtype.name}_gflops'] = round(2 * n**3 * count / (time.perf_counter() - t0) / 1e9, 1)
  return out


def input_pipeline_rates(sides: List[Side], workdir: str, args, text, vocab, boundary,
                         batches: int) -> List[Dict[str, Any]]:
  """Batches/s of each input pipeline alone (no model), interleaved."""
  from components import trainer_module
  from bench.windowing import stages
  files = stages.split_files(workdir, 'train')
  b = args.batch_size
  pipelines = {
      'tutorial (in-memory ids)':
          lambda: tutorial_dataset(text[:boundary], vocab, args.seq_length, b)[0].repeat(),
      'make_dataset, no cache (GZIP TFRecords, parse)':
          lambda: trainer_module.make_dataset(files, args.seq_length, b, 10_000,
                                              repeat=True, cache=False),
      'make_dataset, cache (2nd epoch on)':
          lambda: trainer_module.make_dataset(files, args.seq_length, b, 10_000,
                                              repeat=True, cache=True),
  }
  rows = {name: [] for name in pipelines}
  for _ in range(2):
    for name, make in pipelines.items():
      it = iter(make())
      for _ in range(200 if 'cache' in name and 'no cache' not in name else 5):
        next(it)                              # fill shuffle buffer / cache
      t0 = time.perf_counter()
      for _ in range(batches):
        next(it)
      rows[name].append((time.perf_counter() - t0) / batches)
  return [{'pipeline': name, 'ms_per_batch': round(1000 * min(v), 2),
           'batches_per_s': round(1 / min(v), 1)} for name, v in rows.items()]


# ------------------------------------------------------------------- main
def main(argv=None):
  args = parse_args(argv)
  run = common.Run('train')
  import tensorflow as tf
  from bench.windowing import stages
  from components import window_gen

  names = [n.strip() for n in args.variants.split(',') if n.strip()]
  if not args.xla_chunk:
    names = [n for n in names if not n.endswith('_xla')]
  workdir = args.workdir or tempfile.mkdtemp(prefix='bench-train-')
  t0 = time.perf_counter()
  if not os.path.exists(stages.examples_dir(workdir)):
    counts = stages.prepare_windows([args.corpus], workdir, args.seq_length,
                                    stride=args.seq_length + 1)
  else:
    counts = None
  prep_seconds = time.perf_counter() - t0
  with open(args.corpus, encoding='utf-8') as f:
    text = f.read()
  vocab = sorted(set(text))
  boundary = window_gen.split_boundary(len(text), 0.1)
  print(f'windows {counts} in {prep_seconds:.1f} s; vocab {len(vocab) + 1}', flush=True)

  matmul_before = measured_matmul_peak(args.matmul_seconds) if args.matmul_seconds else {}
  sides = build_sides(args, names, workdir, text, vocab, boundary)
  evals = eval_batches(workdir, args.seq_length, args.batch_size, args.eval_batches)
  print(f'eval: {len(evals)} batches of {args.batch_size} windows', flush=True)

  for side in sides:
    t = time.perf_counter()
    side.fit(max(1, args.warmup * args.batch_size // side.batch_size), timed=False)
    print(f'  warm-up {side.name}: {time.perf_counter() - t:.1f} s', flush=True)
  for r in range(args.rounds):
    order = sides[r % len(sides):] + sides[:r % len(sides)]
    for side in order:
      side.fit(side.chunk, timed=True)
      recent = side.step_seconds[-(side.chunk - 1):]
      print(f'  round {r + 1} {side.name}: {np.median(recent):.3f} s/step '
            f'loss {side.last_loss:.3f}', flush=True)

  machine = common.machine()
  vocab_size = len(vocab) + 1
  flops = flops_per_char(args.embedding_dim, args.rnn_units, vocab_size)
  peak = nominal_peak(machine)
  matmul_after = measured_matmul_peak(args.matmul_seconds) if args.matmul_seconds else {}
  # The machine is shared: the better of the two is the closer to what it can do.
  measured = {k: max(matmul_before[k], matmul_after[k]) for k in matmul_before}
  rows = []
  base = None
  for side in sides:
    chars_per_step = side.batch_size * args.seq_length
    total = float(np.sum(side.step_seconds))
    cps = chars_per_step * len(side.step_seconds) / total if total else float('nan')
    gflops = cps * flops['train'] / 1e9
    is_bf16 = 'bfloat16' in side.precision
    row = {
        'side': side.name, 'precision': side.precision, 'xla': side.xla,
        'batch': side.batch_size, 'timed_steps': len(side.step_seconds),
        'median_step_s': round(float(np.median(side.step_seconds)), 3),
        'chars_per_s': round(cps, 1),
        'chars_per_s_median': round(chars_per_step / float(np.median(side.step_seconds)), 1),
        'gflops': round(gflops, 1),
        'pct_nominal_peak': round(100 * gflops / peak['bf16_gflops' if is_bf16 else 'fp32_gflops'], 1),
        'pct_measured_matmul': (round(100 * gflops / measured['bfloat16_gflops' if is_bf16 else 'float32_gflops'], 1)
                                if measured else None),
        'chars_trained': side.steps_trained * chars_per_step,
        'train_loss_last': round(side.last_loss, 4),
        'warmup_s': round(side.warmup_seconds, 1),
        'step_seconds': [round(x, 3) for x in side.step_seconds],
    }
    p10 = float(np.percentile(side.step_seconds, 10))
    row['p10_step_s'] = round(p10, 3)
    row['chars_per_s_p10'] = round(chars_per_step / p10, 1)
    t = time.perf_counter()
    row['eval_loss'] = round(eval_loss(side.model, evals), 4)
    row['eval_seconds'] = round(time.perf_counter() - t, 1)
    if side.name == 'tutorial':
      base = row
    rows.append(row)
    print(f'  eval {side.name}: {row["eval_loss"]:.4f} ({row["eval_seconds"]} s)', flush=True)
  for row in rows:
    row['speed_vs_tutorial'] = round(row['chars_per_s'] / base['chars_per_s'], 3) if base else None
    row['speed_vs_tutorial_median'] = (
        round(row['chars_per_s_median'] / base['chars_per_s_median'], 3) if base else None)
    row['speed_vs_tutorial_p10'] = (
        round(row['chars_per_s_p10'] / base['chars_per_s_p10'], 3) if base else None)
    row['eval_loss_vs_tutorial'] = round(row['eval_loss'] - base['eval_loss'], 4) if base else None

  inputs = (input_pipeline_rates(sides, workdir, args, text, vocab, boundary, args.input_batches)
            if args.input_batches else [])
  results = {
      'settings': {k: getattr(args, k) for k in (
          'rnn_units', 'embedding_dim', 'batch_size', 'seq_length', 'warmup', 'chunk',
          'rounds', 'xla_chunk', 'eval_batches', 'seed')},
      'versions': common.versions('tensorflow', 'keras', 'tfx'),
      'corpus': os.path.abspath(args.corpus), 'train_chars': boundary,
      'eval_windows': len(evals) * args.batch_size,
      'vocab_size': vocab_size,
      'flops_per_char': flops, 'flops_note': FLOP_NOTE,
      'peak_nominal': peak, 'peak_measured_matmul_2048': measured,
      'peak_measured_matmul_2048_before_after': [matmul_before, matmul_after],
      'gpu': common.gpu_description(),
      'sides': rows, 'input_pipelines': inputs,
  }
  path = run.write(results, args.output)
  print()
  print(common.table(rows, ['side', 'batch', 'timed_steps', 'median_step_s', 'chars_per_s',
                            'speed_vs_tutorial', 'speed_vs_tutorial_median',
                            'speed_vs_tutorial_p10', 'gflops', 'pct_nominal_peak',
                            'pct_measured_matmul', 'chars_trained', 'eval_loss',
                            'eval_loss_vs_tutorial']))
  if inputs:
    print()
    print(common.table(inputs, ['pipeline', 'ms_per_batch', 'batches_per_s']))
  print(f'\npeak nominal {peak}; measured matmul {measured}; GPU: {results["gpu"]}')
  print(f'wrote {path}')
