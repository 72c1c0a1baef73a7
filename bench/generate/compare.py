"""Generation speed of two commits side by side: does a serving change slow `generate`?

Why: a ratio to the tutorial loop is only comparable with another taken on the
same machine at the same time (the machines are shared; the same code gives
4.9x on one and 6.5x on another). So this checks out both commits as git
worktrees and runs each one's own `python -m bench.generate` (its server, its
client, its export) alternately, old, new, old, new, ..., in one session; each run
measures its own tutorial loop, and the JSON keeps every run's ratios plus the
median per side and new / old.

  .venv/bin/python -m bench.generate.compare --old 750ff3b [--new HEAD] [--repeats 2]
      [--generate-args "--chars 500 --batches 1,64 --rounds 3 --step-rounds 2"]
      [--out bench/results/generate_hardening.json]

The worktrees are made with `git worktree add --detach` in a temporary
directory and removed at the end; the project's virtual environment runs both.
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

if __package__ in (None, ''):   # `python bench/generate/compare.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench import common

KEYS = ('grpc generate b1', 'grpc generate b64')


def git(*args: str) -> str:
  return subprocess.run(['git', '-C', common.REPO_DIR, *args], check=True, capture_output=True,
                        text=True).stdout.strip()


def run_side(tree: str, out: str, generate_args: List[str]) -> Dict[str, Any]:
  env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  cmd = [sys.executable, '-m', 'bench.generate', '--out', out] + generate_args
  done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
  if done.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} in {tree} failed:\n{done.stderr[-3000:]}')
  with open(out) as f:
    result = json.load(f)
  rows = {r['mode']: r for r in result['rows']}
  return {'x_tutorial': {k: rows[k]['x_tutorial'] for k in KEYS if k in rows},
          'chars_per_s': {r['mode']: r['chars_per_s'] for r in result['rows']},
          'loadavg_start': result['loadavg_start'], 'loadavg_end': result['loadavg_end'],
          'wall_seconds': result['wall_seconds']}


def main(argv=None) -> Dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--old', default='750ff3b', help='the commit before the change')
  p.add_argument('--new', default='HEAD', help='the commit with the change')
  p.add_argument('--repeats', type=int, default=2, help='runs of each side, alternating')
  p.add_argument('--generate-args', default='--chars 500 --batches 1,64 --rounds 3 --step-rounds 2',
                 help='flags for each python -m bench.generate run')
  p.add_argument('--out', default=os.path.join(common.RESULTS_DIR, 'generate_hardening.json'))
  args = p.parse_args(argv)
  run = common.Run('generate_hardening')
  commits = {'old': git('rev-parse', args.old), 'new': git('rev-parse', args.new)}
  generate_args = shlex.split(args.generate_args)
  work = tempfile.mkdtemp(prefix='bench_generate_compare_')
  trees = {side: os.path.join(work, side) for side in commits}
  runs: List[Dict[str, Any]] = []
  try:
    for side, commit in commits.items():
      git('worktree', 'add', '--detach', trees[side], commit)
    for repeat in range(args.repeats):
      for side in ('old', 'new'):
        out = os.path.join(work, f'{side}-{repeat}.json')
        result = run_side(trees[side], out, generate_args)
        result.update(side=side, repeat=repeat + 1)
        runs.append(result)
        print(f'{side} run {repeat + 1}: ' + ', '.join(
            f'{k} {v:.2f}x' for k, v in result['x_tutorial'].items()), file=sys.stderr, flush=True)
  finally:
    for tree in trees.values():
      if os.path.isdir(tree):
        subprocess.run(['git', '-C', common.REPO_DIR, 'worktree', 'remove', '--force', tree],
                       capture_output=True)
    shutil.rmtree(work, ignore_errors=True)

  summary = {}
  for key in KEYS:
    old = [r['x_tutorial'][key] for r in runs if r['side'] == 'old' and key in r['x_tutorial']]
    new = [r['x_tutorial'][key] for r in runs if r['side'] == 'new' and key in r['x_tutorial']]
    if old and new:
      summary[key] = {'old_x_tutorial_median': statistics.median(old),
                      'new_x_tutorial_median': statistics.median(new),
                      'new_over_old': statistics.median(new) / statistics.median(old),
                      'old_runs': old, 'new_runs': new}
      summary[key]['within_5_percent_or_faster'] = summary[key]['new_over_old'] >= 0.95
  rows = [{'mode': k, 'old': v['old_x_tutorial_median'], 'new': v['new_x_tutorial_median'],
           'new_over_old': v['new_over_old'],
           'ok': 'yes' if v['within_5_percent_or_faster'] else 'NO'} for k, v in summary.items()]
  print(common.table(rows, ['mode', 'old', 'new', 'new_over_old', 'ok'],
                     ['mode', 'old x tutorial', 'new x tutorial', 'new / old', '>= 0.95']))
  cores = os.cpu_count() or 1
  load = common.loadavg()
  path = run.write({
      'old_commit': commits['old'], 'new_commit': commits['new'],
      'generate_command': '.venv/bin/python -m bench.generate ' + ' '.join(generate_args),
      'order': 'old, new alternating, each run its own server, client, export and tutorial loop',
      'contention': (f'shared machine: load average {run.load_start[0]} at start, {load[0]} at '
                     f'end on {cores} cores; ratios to the tutorial loop come from the same run'),
      'summary': summary, 'runs': runs,
  }, args.out)
  print(f'wrote {path}', file=sys.stderr)
  return {'summary': summary, 'runs': runs, 'path': path}


if __name__ == '__main__':
  main()
