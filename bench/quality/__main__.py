"""bench/quality: the `cpu` preset's eval loss and training time, through the real pipeline.

  .venv/bin/python -m bench.quality [--preset cpu] [--overrides k=v,...]

Runs the whole local pipeline (fresh output directory, so nothing is cached) on
the tutorial's corpus and reports what the EvaluationGate measured on the pushed
candidate, eval loss in nats/char and bits/char over the last 10% of the text,
beside the Trainer's own training wall time. Target for `cpu`: <= 1.55 nats/char
(aim 1.50) within 5 minutes of training on a 2-core CPU.
"""

import argparse
import glob
import json
import os
import tempfile
import time

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'tinyshakespeare.txt')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu')
  parser.add_argument('--overrides', default='')
  parser.add_argument('--corpus', default=CORPUS)
  parser.add_argument('--output-dir', default=None, help='default: a new temporary directory')
  args = parser.parse_args()

  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top

  run = common.Run(f'quality_{args.preset}')
  output_dir = args.output_dir or tempfile.mkdtemp(prefix='bench-quality-')
  started = time.monotonic()
  tfx.orchestration.LocalDagRunner().run(local_runner.build(
      output_dir, args.preset, [args.corpus], args.overrides, warm_start=False))
  pipeline_seconds = time.monotonic() - started

  [metrics_path] = glob.glob(os.path.join(
      output_dir, 'pipeline_root', '*', 'CharRnnTrainer', 'model', '*', 'Format-Serving',
      'assets.extra', 'metrics.json'))
  [evaluation_path] = glob.glob(os.path.join(
      output_dir, 'pipeline_root', '*', 'EvaluationGate', 'blessing', '*', 'evaluation.json'))
  with open(metrics_path) as f:
    metrics = json.load(f)
  with open(evaluation_path) as f:
    evaluation = json.load(f)
  row = {
      'preset': args.preset,
      'overrides': args.overrides or '-',
      'eval_loss': evaluation['eval_loss'],
      'bits_per_char': evaluation['bits_per_char'],
      'train_seconds': metrics['train_seconds'],
      'epochs_run': metrics['epochs_run'],
      'precision': metrics.get('precision'),
      'pipeline_seconds': pipeline_seconds,
      'blessed': evaluation['blessed'],
  }
  path = run.write({'result': row, 'trainer_metrics': metrics, 'evaluation': evaluation,
                    'output_dir': output_dir})
  print(common.table([row], list(row)))
  print(f'\n{common.machine_line()}\nwritten to {path}')


if __name__ == '__main__':
  main()
