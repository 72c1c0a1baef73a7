"""`make tensorboard`: TensorBoard on a run's training logs (its ModelRun directory).

  python -m pipeline.tensorboard_logs [--run-id=<id>] [--port=6006]

The newest run by default; `python -m pipeline.report --list` lists the others.
TensorBoard shows the Trainer's Keras logs there (epoch loss, learning rate,
the sample text after every epoch). (TensorBoard 2.16 imports `pkg_resources`:
requirements.in keeps setuptools below 81, which still ships it.)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import runs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output-dir', default=configs.OUTPUT_DIR)
  parser.add_argument('--run-id', default=None, help='default: the newest run')
  parser.add_argument('--host', default='127.0.0.1')
  parser.add_argument('--port', type=int, default=6006)
  args = parser.parse_args(argv)
  try:
    run = runs.read_run(runs.open_store(configs.metadata_path(args.output_dir)), args.run_id)
  except runs.NoRunsError as e:
    print(f'tensorboard: {e}', file=sys.stderr)
    return 1
  logdir = run.model_run_dir()
  if not logdir or not os.path.isdir(logdir):
    print(f'tensorboard: run {run.run_id} has no training logs (it stopped before the Trainer)',
          file=sys.stderr)
    return 1
  print(f'TensorBoard for run {run.run_id}: http://{args.host}:{args.port}/ (logs: {logdir})',
        flush=True)
  from tensorboard import main as tensorboard_main  # pylint: disable=g-import-not-at-top
  sys.argv = ['tensorboard', f'--logdir={logdir}', f'--host={args.host}', f'--port={args.port}']
  tensorboard_main.run_main()
  return 0


if __name__ == '__main__':
  sys.exit(main())
