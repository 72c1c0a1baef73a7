"""Which model is served, trained on what, and what came before it: `make status`.

  python -m pipeline.status            # a table of every run, then the versions on disk
  python -m pipeline.status --json     # the same, for scripts

Reads ML Metadata (pipeline/runs.py: when, corpus fingerprint and size, preset,
steps, the gate's eval loss, blessed or not and why, the pushed version) and the
serving directory (pipeline/rollback.py: which versions are there, which moved
aside by a rollback, and which one is served now: the newest complete version,
what TF Serving's default `latest 1` policy serves).
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import rollback
from pipeline import runs


def run_row(run: runs.RunRecord) -> Dict[str, Any]:
  corpus, metrics, evaluation = run.corpus(), run.metrics(), run.evaluation()
  if run.state == 'failed':
    gate = f'run failed in {run.failed_component}'
  elif not evaluation:
    gate = 'not evaluated'
  elif evaluation.get('blessed'):
    gate = 'blessed'
  else:
    gate = 'NOT blessed: ' + '; '.join(evaluation.get('reasons') or ['(no reason recorded)'])
  return {
      'run_id': run.run_id, 'started': run.started_text(), 'state': run.state,
      'corpus_fingerprint': corpus.get('fingerprint', ''), 'corpus_chars': corpus.get('num_chars'),
      'corpus_sources': corpus.get('sources', ''), 'preset': run.preset(),
      'steps': metrics.get('train_steps'), 'eval_loss': evaluation.get('eval_loss'),
      'baseline_version': run.baseline_version(),
      'baseline_eval_loss': evaluation.get('baseline_eval_loss'),
      'blessed': evaluation.get('blessed'), 'gate': gate,
      'pushed_version': run.pushed_version(),
  }


def collect(output_dir: str) -> Dict[str, Any]:
  metadata_path = configs.metadata_path(output_dir)
  try:
    rows = [run_row(r) for r in runs.read_runs(metadata_path)]
  except runs.NoRunsError:
    rows = []
  base = rollback.model_base(output_dir)
  pushed_by = {r['pushed_version']: r['run_id'] for r in rows if r['pushed_version']}
  served = rollback.served_version(base)
  versions = []
  for where, directory in (('serving', base), ('rolled back', rollback.aside_dir(base))):
    for version, complete in sorted(rollback.versions(directory).items()):
      versions.append({'version': version, 'where': where, 'path': os.path.join(directory, str(version)),
                       'complete': complete, 'served': where == 'serving' and version == served,
                       'pushed_by_run': pushed_by.get(version)})
  versions.sort(key=lambda v: v['version'])
  pending = rollback.pending_rollback(base)
  return {'metadata': metadata_path, 'model_base_path': base, 'served_version': served,
          'runs': rows, 'versions': versions,
          'rollback': pending and {k: pending[k] for k in ('time', 'version', 'moved')}}


def _short(value: Any, width: int) -> str:
  text = '—' if value in (None, '') else str(value)
  return text if len(text) <= width else text[:width - 1] + '…'


def _table(rows: List[List[str]], head: List[str]) -> str:
  widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
  lines = ['  '.join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip()]
  for row in rows:
    lines.append('  '.join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
  return '\n'.join(lines)


def render(status: Dict[str, Any]) -> str:
  out = [f'Runs (ML Metadata {status["metadata"]}):']
  if status['runs']:
    rows = []
    for r in status['runs']:
      corpus = (f'{r["corpus_chars"]:,} chars {r["corpus_fingerprint"][:12]}'
                if r['corpus_chars'] is not None else '—')
      served = ('  <- served' if r['pushed_version'] and
                r['pushed_version'] == status['served_version'] else '')
      rows.append([r['run_id'], r['state'], _short(r['preset'], 28), corpus,
                   _short(r['steps'], 8),
                   f'{r["eval_loss"]:.4f}' if r['eval_loss'] is not None else '—',
                   (f'{r["baseline_eval_loss"]:.4f} (v{r["baseline_version"]})'
                    if r['baseline_eval_loss'] is not None else '—'),
                   _short(r['gate'], 70), _short(r['pushed_version'], 12) + served])
    out.append(_table(rows, ['run (started)', 'state', 'preset', 'corpus', 'steps', 'eval loss',
                             'baseline', 'gate', 'pushed']))
  else:
    out.append('  no runs yet (make run)')
  out.append('')
  out.append(f'Versions ({status["model_base_path"]}):')
  if status['versions']:
    rows = [[str(v['version']),
             'SERVED' if v['served'] else v['where'] + ('' if v['complete'] else ' (incomplete)'),
             v['pushed_by_run'] or '—', v['path']] for v in status['versions']]
    out.append(_table(rows, ['version', 'state', 'pushed by run', 'path']))
  else:
    out.append('  none pushed yet')
  out.append('')
  served = status['served_version']
  out.append(f'Served now: {served if served is not None else "nothing"} '
             '(the newest complete version under the base path: TF Serving\'s default policy)')
  if status['rollback']:
    rb = status['rollback']
    out.append(f'Rolled back at {rb["time"]} to {rb["version"]} '
               f'(moved aside: {", ".join(map(str, rb["moved"]))}); undo: make rollforward')
  return '\n'.join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output-dir', default=configs.OUTPUT_DIR)
  parser.add_argument('--json', action='store_true', help='machine-readable output')
  args = parser.parse_args(argv)
  try:
    status = collect(args.output_dir)
  except rollback.RollbackError as e:
    print(f'status: {e}', file=sys.stderr)
    return 1
  print(json.dumps(status, indent=1) if args.json else render(status))
  return 0


if __name__ == '__main__':
  sys.exit(main())
