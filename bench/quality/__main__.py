"""bench/quality: a preset's eval loss and training time, through the real pipeline.

  .venv/bin/python -m bench.quality [--preset cpu] [--overrides k=v,... ...] [--output F]

Runs the whole local pipeline (fresh output directory, so nothing is cached) on
the tutorial's corpus and reports what the EvaluationGate measured on the pushed
candidate, eval loss in nats/char and bits/char over the last 10% of the text,
beside the Trainer's own training wall time. Each `--overrides` value (preset
fields, as in CHAR_RNN_OVERRIDES; '' for the preset as it is) is one more full
run, so variants are compared on the same machine in the same session. Target
for `cpu`: <= 1.55 nats/char (aim 1.50) within 5 minutes of training on a 2-core
CPU.
"""

import argparse
import glob
import json
import os
import tempfile
import time

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, 'data', 'tinyshakespeare.txt')


def run_variant(preset: str, overrides: str, corpus: str, output_dir: str):
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top

  load_start = common.loadavg()
  started = time.monotonic()
  tfx.orchestration.LocalDagRunner().run(local_runner.build(
      output_dir, preset, [corpus], overrides, warm_start=False))
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
      'preset': preset,
      'overrides': overrides or '-',
      'eval_loss': evaluation['eval_loss'],
      'bits_per_char': evaluation['bits_per_char'],
      'train_seconds': metrics['train_seconds'],
      'epochs_run': metrics['epochs_run'],
      'train_steps': metrics.get('train_steps'),
      'last_train_loss': metrics['history']['loss'][-1],
      'precision': metrics.get('precision'),
      'pipeline_seconds': pipeline_seconds,
      'blessed': evaluation['blessed'],
      'load': f'{load_start[0]:.1f} -> {common.loadavg()[0]:.1f}',
  }
  return row, {'row': row, 'trainer_metrics': metrics, 'evaluation': evaluation,
               'output_dir': output_dir}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu')
  parser.add_argument('--overrides', nargs='*', default=[''],
                      help='one full pipeline run per value')
  parser.add_argument('--corpus', default=CORPUS)
  parser.add_argument('--output', default=None,
                      help='results JSON (default bench/results/quality_<preset>.json)')
  args = parser.parse_args()

  run = common.Run(f'quality_{args.preset}')
  rows, details = [], []
  for overrides in args.overrides or ['']:
    output_dir = tempfile.mkdtemp(prefix='bench-quality-')
    row, detail = run_variant(args.preset, overrides, args.corpus, output_dir)
    rows.append(row)
    details.append(detail)
    print(common.table([row], list(row)), flush=True)
  path = run.write({'results': rows, 'runs': details}, args.output)
  print(common.table(rows, list(rows[0])))
  print(f'\n{common.machine_line()}\nwritten to {path}')


if __name__ == '__main__':
  main()
