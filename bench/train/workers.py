"""`python -m bench.train.workers`: multi-worker training, 1 worker vs 2 workers on loopback.

The same inputs (WindowGen records of the first --chars characters of the
embedded corpus), the same settings (the `tiny` preset by default, a fixed
number of steps, seed 0) trained twice, interleaved --repeats times:

* 1 worker: plain run_fn (Keras fit, no TF_CONFIG);
* 2 workers: two processes with TF_CONFIG (components/multiworker.py,
  MultiWorkerMirroredStrategy over gRPC on 127.0.0.1), the global batch split.

A step's time is taken from history.json's per-step clock (the steady part:
the first --skip steps, which trace, are left out), so process start, data
preparation, validation and export do not count. Per step both runs process
one global batch, so chars/s overall = batch_size * seq_length / step time, and
per worker = overall / workers. Overhead = 2-worker step time / 1-worker step
time - 1: on one machine with 2 cores the two workers share the cores the one
worker had, so the ideal is 0 and anything above is the cost of the strategy
(all-reduce over gRPC, the chief's agreement, two processes' scheduling).
Eval losses of both runs are reported too: the same data and seed, so they
should agree closely (not bit for bit: sums are ordered differently).

Threads: by default each of the 2 worker processes gets half the machine's
cores for TensorFlow's thread pools (TF_NUM_INTRAOP_THREADS/INTEROP), as each
would have its own machine in a real cluster; `--threads-per-worker 0` leaves
TF's default, where each process sizes its pools for all cores and the two
oversubscribe them (measured: +49 % on GRU-256, quiet, 2026-12-01 08:09).

Writes bench/results/train_workers.json and prints a table. The machine is
shared: the load averages are recorded with the figures.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

from bench import common
from pipeline import configs
from tests import worker_cluster

DEFAULT_OVERRIDES = ('steps_per_epoch=120, epochs=1, eval_steps=4, sample_chars=0, '
                     'backup_every_steps=0, progress_seconds=30')


def _step_seconds(history: Dict[str, Any], skip: int) -> float:
  """Mean seconds per step over the steps after the first `skip` (history.json's clock)."""
  points = [p for p in history['steps'] if p['step'] > skip]
  if len(points) < 2:
    raise ValueError(f'too few steps after the first {skip} to time: use more steps')
  first, last = points[0], points[-1]
  return (last['elapsed_seconds'] - first['elapsed_seconds']) / (last['step'] - first['step'])


def _thread_env(workers: int, threads: int) -> Dict[str, str]:
  """TensorFlow's thread pools for each of `workers` processes sharing this machine."""
  if workers == 1 or threads <= 0:
    return {}
  return {'TF_NUM_INTRAOP_THREADS': str(threads), 'TF_NUM_INTEROP_THREADS': str(threads)}


def _run(args: Dict[str, Any], workers: int, workdir: str, timeout: float,
         threads: int) -> Dict[str, Any]:
  started = time.monotonic()
  load = common.loadavg()
  cluster = worker_cluster.Cluster(args, workers, workdir, env=_thread_env(workers, threads))
  codes = cluster.wait(timeout)
  for i, code in enumerate(codes):
    if code:
      raise RuntimeError(f'{workers}-worker run: task {i} failed:\n{cluster.tail(i)}')
  with open(os.path.join(args['run'], 'history.json')) as f:
    history = json.load(f)
  with open(os.path.join(args['serving'], 'assets.extra', 'metrics.json')) as f:
    metrics = json.load(f)
  return {'history': history, 'metrics': metrics, 'load_start': load,
          'wall_seconds': time.monotonic() - started}


def main(argv: List[str] = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m bench.train.workers',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--preset', default='tiny')
  parser.add_argument('--overrides', default=DEFAULT_OVERRIDES)
  parser.add_argument('--chars', type=int, default=200_000,
                      help='characters of the embedded corpus to train on')
  parser.add_argument('--repeats', type=int, default=1, help='interleaved 1/2-worker pairs')
  parser.add_argument('--skip', type=int, default=10, help='first steps left out of the timing')
  parser.add_argument('--timeout', type=float, default=600)
  parser.add_argument('--threads-per-worker', type=int, default=-1,
                      help='TF intra/inter-op threads of each process when several share this '
                           'machine (-1: cores / workers, as if each had its own share of the '
                           'machine, which a real cluster gives it; 0: TF\'s default, every '
                           'process sized for all cores, so they oversubscribe them)')
  parser.add_argument('--output', default=os.path.join(common.RESULTS_DIR,
                                                       'train_workers.json'))
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  run = common.Run('train_workers')
  threads = (max(1, (os.cpu_count() or 2) // 2) if args.threads_per_worker < 0
             else args.threads_per_worker)
  preset = configs.get_preset(args.preset, args.overrides)
  with open(common.CORPUS_PATH, encoding='utf-8') as f:
    text = f.read()[:args.chars]
  rows, runs = [], []
  with tempfile.TemporaryDirectory(prefix='bench-workers-') as tmp:
    data_dir = os.path.join(tmp, 'data')
    os.makedirs(data_dir)
    inputs = worker_cluster.make_examples(data_dir, text, preset)
    for repeat in range(args.repeats):
      for workers in (1, 2):
        workdir = os.path.join(tmp, f'run-{repeat}-{workers}')
        os.makedirs(workdir)
        fn_args = worker_cluster.run_fn_args(inputs, workdir, preset.training_config())
        result = _run(fn_args, workers, workdir, args.timeout, threads)
        step = _step_seconds(result['history'], args.skip)
        chars = preset.batch_size * preset.seq_length / step
        row = {'repeat': repeat + 1, 'workers': workers, 'step_ms': step * 1000,
               'chars_per_second': chars, 'chars_per_second_per_worker': chars / workers,
               'eval_loss': result['metrics']['eval_loss'],
               'train_steps': result['metrics']['train_steps'],
               'wall_seconds': round(result['wall_seconds'], 1),
               'load_start': result['load_start'][0]}
        rows.append(row)
        runs.append(dict(row, metrics={k: result['metrics'].get(k) for k in (
            'workers', 'global_batch_size', 'per_worker_batch_size', 'chars_per_second',
            'chars_per_second_per_worker', 'step_seconds_total', 'elapsed_seconds',
            'precision', 'strategy')}))
        print(f'repeat {repeat + 1}, {workers} worker(s): {step * 1000:.1f} ms/step, '
              f'eval loss {row["eval_loss"]:.4f} ({row["wall_seconds"]:.0f} s)', flush=True)

  def median(workers, key):
    return statistics.median(r[key] for r in rows if r['workers'] == workers)

  summary = {
      'step_ms_1_worker': median(1, 'step_ms'),
      'step_ms_2_workers': median(2, 'step_ms'),
      'chars_per_second_1_worker': median(1, 'chars_per_second'),
      'chars_per_second_2_workers': median(2, 'chars_per_second'),
      'chars_per_second_per_worker_2_workers': median(2, 'chars_per_second_per_worker'),
  }
  summary['overhead_2_vs_1'] = summary['step_ms_2_workers'] / summary['step_ms_1_worker'] - 1
  pairs = [(a['eval_loss'], b['eval_loss']) for a, b in zip(
      [r for r in rows if r['workers'] == 1], [r for r in rows if r['workers'] == 2])]
  summary['eval_loss_max_abs_difference'] = max(abs(a - b) for a, b in pairs)
  path = run.write({
      'preset': args.preset, 'overrides': args.overrides, 'chars': args.chars,
      'batch_size': preset.batch_size, 'seq_length': preset.seq_length,
      'timed_from_step': args.skip + 1,
      'threads_per_worker_when_2': threads or 'TF default (all cores each)',
      'note': ('2 workers share the 2 cores the 1 worker had: overhead is the strategy\'s '
               'cost (ideal 0), not a speed-up; figures taken under the load shown'),
      'rows': runs, 'summary': summary}, args.output)
  columns = ['repeat', 'workers', 'step_ms', 'chars_per_second', 'chars_per_second_per_worker',
             'eval_loss', 'wall_seconds', 'load_start']
  print(common.table(rows, columns))
  print(f'\noverhead of 2 workers vs 1 (step time ratio - 1): '
        f'{summary["overhead_2_vs_1"] * 100:+.1f} %; eval loss difference '
        f'{summary["eval_loss_max_abs_difference"]:.4f}')
  print(f'{common.machine_line()}; load {common.loadavg()}; written to {path}')


if __name__ == '__main__':
  main()
