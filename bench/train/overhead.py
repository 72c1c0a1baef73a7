"""The Trainer's step time against a bare Keras loop of the same model, side by side.

  .venv/bin/python -m bench.train overhead            # the `cpu` preset, 2 rounds, ~6-8 min
  .venv/bin/python -m bench.train overhead --quick    # plumbing: a small model, ~2 min

Why: a step of the Trainer should cost what the model's maths costs. Anything
around it (the tf.data pipeline with its random re-cuts, the per-step callback
that keeps the budget, schedule, divergence check, history and progress, step
backups, TensorBoard, checkpoints, the epoch's sample) is overhead that a
wall-clock budget pays for in steps not taken.

Sides, taking turns (bare, trainer, bare, trainer, ...) so the shared machine's
load hits both alike:
  bare     `build_keras_model` + the same compile (build_optimizer: Adam, rate, clipnorm)
           under the same precision, `train_on_batch` over batches already in
           memory: nothing but the maths and Keras' own call path.
  trainer  the real `components.trainer_module.run_fn`, in this process, on
           WindowGen's TFRecords of the same corpus, for one full pass (the
           preset's epoch), with everything the preset switches on: random
           re-cuts, callbacks, backups, TensorBoard, checkpoint, sample, export.

The trainer's per-step times come from its own history.json (the monitor stamps
every step, after that step's callbacks ran): the gap between two stamps is all
that happens between two steps, backups included. The first step (tracing) is
left out on both sides. The epoch's end (validation, sample, checkpoint) is
reported apart, and also amortized over the epoch ('all-in').
"""

import argparse
import json
import os
import tempfile
import threading
import time
from typing import Any, Dict, List

import numpy as np

from bench import common


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog='bench.train overhead', description=__doc__.split('\n')[0])
  p.add_argument('--preset', default='cpu')
  p.add_argument('--overrides', default='',
                 help='preset overrides for both sides (e.g. "rnn_units=256")')
  p.add_argument('--precision', default=None,
                 help='float32 | mixed_bfloat16 (default: what the preset resolves to here)')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--bare_steps', type=int, default=0,
                 help='bare steps per round (0: as many as the trainer\'s epoch)')
  p.add_argument('--quick', action='store_true',
                 help='plumbing check: a small model (GRU-128), one round')
  p.add_argument('--corpus', default=common.CORPUS_PATH)
  p.add_argument('--workdir', default=None, help='default: a fresh temp dir')
  p.add_argument('--output', default=None,
                 help='default: bench/results/train_overhead[_quick].json')
  args = p.parse_args(argv)
  if args.quick:
    small = 'embedding_dim=32, rnn_units=128'
    args.overrides = f'{small}, {args.overrides}' if args.overrides else small
    args.rounds = 1
  args.output = args.output or os.path.join(
      common.RESULTS_DIR, 'train_overhead_quick.json' if args.quick else 'train_overhead.json')
  return args


class _CpuClock:
  """(monotonic, process CPU seconds) pairs sampled every 20 ms from a thread.

  The process's CPU time counts all its threads (tf.data's too) and, unlike wall
  time, not the other users of a shared machine: the load-robust figure. The
  trainer's steps are stamped on the monotonic clock (history.json's seconds
  from run_fn's start), so its CPU seconds between two stamps are interpolated
  from these samples.
  """

  def __init__(self):
    self.samples = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.is_set():
      self.samples.append((time.monotonic(), time.process_time()))
      self._stop.wait(0.02)

  def cpu_at(self, t: float) -> float:
    ts, cs = zip(*self.samples)
    return float(np.interp(t, ts, cs))

  def close(self):
    self._stop.set()
    self._thread.join()


def _trainer_round(preset, examples_dir: str, vocab_dir: str, counts: Dict[str, int],
                   workdir: str, precision: str, index: int, cpu: _CpuClock) -> Dict[str, Any]:
  from tfx.components.trainer.fn_args_utils import FnArgs
  from components import examples_format, trainer_module

  config = preset.training_config()
  config.update(precision=precision, epochs=1, max_train_seconds=None, vocabulary_uri=vocab_dir,
                backup_dir=os.path.join(workdir, f'backup-{index}'),
                num_windows_train=counts['train'], num_windows_eval=counts['eval'])
  out = os.path.join(workdir, f'trainer-{index}')
  started = time.perf_counter()
  start_monotonic = time.monotonic()        # ~ run_fn's Clock start (its first line)
  trainer_module.run_fn(FnArgs(
      train_files=[examples_format.split_pattern(examples_dir, 'train')],
      eval_files=[examples_format.split_pattern(examples_dir, 'eval')],
      serving_model_dir=os.path.join(out, 'model', 'Format-Serving'),
      model_run_dir=os.path.join(out, 'model_run'), custom_config=config, base_model=None))
  wall = time.perf_counter() - started
  with open(os.path.join(out, 'model_run', 'history.json')) as f:
    history = json.load(f)
  with open(os.path.join(out, 'model', 'Format-Serving', 'assets.extra', 'metrics.json')) as f:
    metrics = json.load(f)
  stamps = [p['elapsed_seconds'] for p in history['steps']]
  if len(stamps) != metrics['train_steps']:
    raise SystemExit(f'history.json holds {len(stamps)} points for {metrics["train_steps"]} '
                     'steps: more than MAX_HISTORY_POINTS, the per-step gaps are not all there')
  steps = np.diff(stamps)                       # drops the first (tracing) step
  epoch_end = history['epochs'][0]['elapsed_seconds'] - stamps[-1]
  cpu_seconds = (cpu.cpu_at(start_monotonic + stamps[-1])
                 - cpu.cpu_at(start_monotonic + stamps[0]))
  return {'steps': steps.tolist(), 'cpu_ms_per_step': 1000 * cpu_seconds / len(steps),
          'epoch_end_seconds': epoch_end, 'run_fn_seconds': wall,
          'first_step_seconds': stamps[0] - 0.0, 'precision': metrics['precision'],
          'precision_timings_ms': metrics.get('precision_timings_ms'),
          'eval_loss': metrics['eval_loss'], 'train_steps': metrics['train_steps']}


class _Bare:
  """The same model and compile, `train_on_batch` over in-memory batches."""

  def __init__(self, preset, vocab_size: int, batches: List, precision: str):
    import keras
    from components import model as model_lib
    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
      self.model = model_lib.build_keras_model(
          vocab_size, preset.embedding_dim, preset.rnn_type, preset.rnn_units,
          preset.num_layers, preset.dropout)
    finally:
      keras.mixed_precision.set_global_policy(previous)
    self.model.compile(optimizer=model_lib.build_optimizer(
                           preset.learning_rate, preset.clipnorm, preset.weight_decay),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    self.batches = batches
    self._next = 0
    self.first_step_seconds = None

  def run(self, steps: int):
    """Wall seconds of each step, and the process CPU seconds of them all."""
    times, cpu = [], 0.0
    for _ in range(steps + (1 if self.first_step_seconds is None else 0)):
      x, y = self.batches[self._next % len(self.batches)]
      self._next += 1
      t, c = time.perf_counter(), time.process_time()
      self.model.train_on_batch(x, y)            # returns numpy: the step is finished
      seconds = time.perf_counter() - t
      if self.first_step_seconds is None:
        self.first_step_seconds = seconds        # tracing, left out
      else:
        times.append(seconds)
        cpu += time.process_time() - c
    return times, cpu


def _summary(times: List[float]) -> Dict[str, float]:
  a = np.asarray(times)
  return {'steps': int(a.size), 'mean_ms': round(1000 * float(a.mean()), 1),
          'median_ms': round(1000 * float(np.median(a)), 1),
          'p10_ms': round(1000 * float(np.percentile(a, 10)), 1)}


def main(argv=None):
  args = parse_args(argv)
  run = common.Run('train_overhead')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from bench.windowing import stages
  from components import examples_format, training, trainer_module
  from components.text import CharVocab
  from pipeline import configs

  preset = configs.get_preset(args.preset, args.overrides)
  precision = args.precision or training.resolve_precision(preset.precision)
  workdir = args.workdir or tempfile.mkdtemp(prefix='bench-overhead-')
  if not os.path.exists(stages.examples_dir(workdir)):
    counts = stages.prepare_windows([args.corpus], workdir, preset.seq_length,
                                    stride=preset.window_stride,
                                    eval_fraction=preset.eval_fraction)
  else:
    raise SystemExit(f'{workdir} already holds examples: give a fresh --workdir')
  vocab = CharVocab.load(stages.vocab_dir(workdir))
  train_ds = trainer_module.make_dataset(
      [stages.split_files(workdir, 'train')], preset.seq_length, preset.batch_size,
      shuffle_buffer=preset.shuffle_buffer, repeat=True, random_offsets=preset.random_offsets,
      seed=0)
  batches = [(x.numpy(), y.numpy()) for x, y in train_ds.take(64)]
  bare = _Bare(preset, len(vocab), batches, precision)
  per_epoch = trainer_module.steps_per_epoch(
      configs.tc.TrainingConfig.from_settings(preset), counts['train'],
      [stages.split_files(workdir, 'train')])
  bare_steps = args.bare_steps or per_epoch - 1
  print(f'{preset.rnn_type.upper()}-{preset.rnn_units}, batch {preset.batch_size}, {precision}; '
        f'{per_epoch} steps per epoch; {args.rounds} rounds; load {common.loadavg()}',
        flush=True)

  bare_times, bare_cpu, trainer_rounds = [], 0.0, []
  cpu = _CpuClock()
  for r in range(args.rounds):
    t, c = bare.run(bare_steps)
    bare_times.extend(t)
    bare_cpu += c
    print(f'  round {r + 1} bare:    {_summary(t)}, cpu {1000 * c / len(t):.1f} ms/step',
          flush=True)
    tr = _trainer_round(preset, stages.examples_dir(workdir), stages.vocab_dir(workdir),
                        counts, workdir, precision, r, cpu)
    trainer_rounds.append(tr)
    print(f'  round {r + 1} trainer: {_summary(tr["steps"])}, cpu {tr["cpu_ms_per_step"]:.1f} '
          f'ms/step, epoch end {tr["epoch_end_seconds"]:.1f} s, run_fn '
          f'{tr["run_fn_seconds"]:.1f} s', flush=True)
  cpu.close()

  trainer_times = [s for tr in trainer_rounds for s in tr['steps']]
  bare_s, trainer_s = _summary(bare_times), _summary(trainer_times)
  epoch_end = float(np.mean([tr['epoch_end_seconds'] for tr in trainer_rounds]))
  all_in_ms = 1000 * (np.mean(trainer_times) + epoch_end / per_epoch)
  bare_cpu_ms = 1000 * bare_cpu / len(bare_times)
  trainer_cpu_ms = float(np.average([tr['cpu_ms_per_step'] for tr in trainer_rounds],
                                    weights=[len(tr['steps']) for tr in trainer_rounds]))
  rows = [
      dict(side='bare train_on_batch', **bare_s, cpu_ms=round(bare_cpu_ms, 1), ratio_mean=1.0,
           ratio_median=1.0, ratio_cpu=1.0),
      dict(side='trainer run_fn (steps)', **trainer_s, cpu_ms=round(trainer_cpu_ms, 1),
           ratio_mean=round(trainer_s['mean_ms'] / bare_s['mean_ms'], 3),
           ratio_median=round(trainer_s['median_ms'] / bare_s['median_ms'], 3),
           ratio_cpu=round(trainer_cpu_ms / bare_cpu_ms, 3)),
      dict(side='trainer, epoch end amortized', steps=trainer_s['steps'],
           mean_ms=round(all_in_ms, 1), median_ms=None, p10_ms=None, cpu_ms=None,
           ratio_mean=round(all_in_ms / bare_s['mean_ms'], 3), ratio_median=None,
           ratio_cpu=None),
  ]
  results = {
      'preset': args.preset, 'overrides': args.overrides or '-', 'precision': precision,
      'model': {k: getattr(preset, k) for k in ('embedding_dim', 'rnn_type', 'rnn_units',
                                                 'num_layers', 'batch_size', 'seq_length')},
      'steps_per_epoch': per_epoch, 'rounds': args.rounds,
      'interleaving': 'bare, trainer, bare, trainer, ... in one process',
      'epoch_end_seconds_mean': round(epoch_end, 2),
      'versions': common.versions('tensorflow', 'keras', 'tfx'),
      'rows': rows,
      'bare_step_seconds': [round(x, 4) for x in bare_times],
      'trainer_rounds': [dict(tr, steps=[round(x, 4) for x in tr['steps']])
                         for tr in trainer_rounds],
  }
  path = run.write(results, args.output)
  print()
  print(common.table(rows, ['side', 'steps', 'mean_ms', 'median_ms', 'p10_ms', 'cpu_ms',
                            'ratio_mean', 'ratio_median', 'ratio_cpu']))
  print(f'\nepoch end (validation, sample, checkpoint) {epoch_end:.1f} s per {per_epoch}-step '
        f'epoch; {common.machine_line()}; load {common.loadavg()}\nwritten to {path}')
