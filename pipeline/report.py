"""The run report: one small HTML page and one PNG of plots per pipeline run.

  python -m pipeline.report                 # the newest run under CHAR_RNN_OUTPUT_DIR
  python -m pipeline.report --run-id=<id>   # any run ML Metadata holds
  python -m pipeline.report --list          # the run ids
  python -m pipeline.report --logdir        # the run's TensorBoard logs (make tensorboard)

`make run` (pipeline/local_runner.py) writes it after every run and prints its path:
<output_dir>/reports/<run id>/report.html beside plots.png. Everything comes from
ML Metadata and the run's artifacts (pipeline/runs.py), so a report can be
regenerated at any time for any run, also for a failed one (it shows how far it got).

Shows: the gate's decision against the baseline with both losses and its reasons,
the pushed version; train and eval loss per step and per epoch, learning rate,
steps/s against the time budget, samples per epoch; corpus size, fingerprint and
vocabulary; wall time per component (execution create -> last update).
"""

import argparse
import html
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import runs

REPORTS_DIRNAME = 'reports'
REPORT_FILE = 'report.html'
PLOTS_FILE = 'plots.png'


def reports_dir(output_dir: str = configs.OUTPUT_DIR) -> str:
  return os.path.join(output_dir, REPORTS_DIRNAME)


def _safe(run_id: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.' else '-' for c in run_id)


def _atomic_write(path: str, data: bytes) -> None:
  """Readers see the old file or the new one, never half of one."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# ------------------------------------------------------------------ figures
def _steps_per_second(history: Dict[str, Any], metrics: Dict[str, Any]) -> Optional[float]:
  steps = history.get('steps') or []
  if len(steps) >= 2 and steps[-1]['elapsed_seconds'] > steps[0]['elapsed_seconds']:
    return ((steps[-1]['step'] - steps[0]['step'])
            / (steps[-1]['elapsed_seconds'] - steps[0]['elapsed_seconds']))
  if metrics.get('train_steps') and metrics.get('train_seconds'):
    return metrics['train_steps'] / metrics['train_seconds']
  return None


def plot(run: runs.RunRecord, path: str) -> None:
  """The run's six panels as one PNG (matplotlib, Agg: no display needed)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  history, metrics, evaluation = run.history(), run.metrics(), run.evaluation()
  steps, epochs = history.get('steps') or [], history.get('epochs') or []
  fig, axes = plt.subplots(2, 3, figsize=(15, 8.2))
  fig.suptitle(f'Run {run.run_id} ({run.state})', fontsize=12)

  ax = axes[0][0]
  ax.set_title('loss per step (nats/char)')
  if steps:
    ax.plot([s['step'] for s in steps], [s['loss'] for s in steps], label='train', lw=1)
    ends = {}
    for s in steps:
      ends[s.get('epoch')] = s['step']
    evals = [(ends.get(e['epoch']), e['val_loss']) for e in epochs
             if e.get('val_loss') is not None and ends.get(e['epoch']) is not None]
    if evals:
      ax.plot(*zip(*evals), 'o-', label='eval (epoch end)')
    ax.set_xlabel('step')
    ax.legend()
  else:
    ax.text(0.5, 0.5, 'no per-step history\n(history.json missing)', ha='center',
            va='center', transform=ax.transAxes, color='gray')

  ax = axes[0][1]
  ax.set_title('loss per epoch (nats/char)')
  for key, label in (('loss', 'train'), ('val_loss', 'eval')):
    points = [(e['epoch'], e[key]) for e in epochs if e.get(key) is not None]
    if points:
      ax.plot(*zip(*points), 'o-', label=label)
  if evaluation.get('eval_loss') is not None:
    ax.axhline(evaluation['eval_loss'], color='C2', ls='--', lw=1, label='gate (exported model)')
  ax.set_xlabel('epoch')
  if ax.lines:
    ax.legend()

  ax = axes[0][2]
  ax.set_title('learning rate')
  if steps and any(s.get('learning_rate') is not None for s in steps):
    ax.plot([s['step'] for s in steps], [s.get('learning_rate') for s in steps])
    ax.set_xlabel('step')
  else:
    points = [(e['epoch'], e['learning_rate']) for e in epochs
              if e.get('learning_rate') is not None]
    if points:
      ax.plot(*zip(*points), 'o-')
      ax.set_xlabel('epoch')

  ax = axes[1][0]
  budget = history.get('time_budget_seconds')
  rate = _steps_per_second(history, metrics)
  ax.set_title('steps against the time budget' + (f' ({rate:.1f} steps/s)' if rate else ''))
  if steps:
    ax.plot([s['elapsed_seconds'] for s in steps], [s['step'] for s in steps])
  elif metrics.get('train_seconds'):
    ax.plot([0, metrics['train_seconds']], [0, metrics.get('train_steps', 0)], 'o-')
  if budget:
    ax.axvline(budget, color='C3', ls='--', label=f'budget {budget:.0f} s')
    ax.legend()
  ax.set_xlim(left=0)
  ax.set_ylim(bottom=0)
  ax.set_xlabel('seconds since the Trainer started')
  ax.set_ylabel('step')

  ax = axes[1][1]
  ax.set_title('the gate: ' + ('BLESSED' if evaluation.get('blessed') else 'NOT blessed'))
  bars = [('candidate', evaluation.get('eval_loss'))]
  if evaluation.get('baseline_eval_loss') is not None:
    bars.append((f'baseline v{run.baseline_version() or "?"}', evaluation['baseline_eval_loss']))
  bars = [(k, v) for k, v in bars if v is not None]
  if bars:
    ax.bar([k for k, _ in bars], [v for _, v in bars], color=['C0', 'C7'][:len(bars)])
    for i, (_, v) in enumerate(bars):
      ax.text(i, v, f'{v:.4f}', ha='center', va='bottom')
    for (label, loss), style in zip(_thresholds(evaluation), ('--', '-.')):
      ax.axhline(loss, color='C3', ls=style, label=f'{label} = {loss:.3f}')
    if evaluation.get('baseline_eval_loss') is not None:
      ax.axhline(evaluation['baseline_eval_loss'] + evaluation.get('regression_tolerance', 0),
                 color='C1', ls=':', label='baseline + tolerance')
    ax.set_ylabel('eval loss (nats/char)')
    ax.legend(loc='lower right')

  ax = axes[1][2]
  ax.set_title(f'wall time per component ({run.finished - run.started:.0f} s in all)')
  names = [c.name for c in run.components][::-1]
  seconds = [c.seconds for c in run.components][::-1]
  colours = [{'cached': 'C7', 'failed': 'C3'}.get(c.state, 'C0') for c in run.components][::-1]
  ax.barh(names, seconds, color=colours)
  for i, c in enumerate(run.components[::-1]):
    ax.text(seconds[i], i, f' {seconds[i]:.1f} s' + (' (cached)' if c.state == 'cached' else '')
            + (' FAILED' if c.state == 'failed' else ''), va='center', fontsize=8)
  ax.set_xlabel('seconds')

  fig.tight_layout()
  import io
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=80)
  plt.close(fig)
  _atomic_write(path, buffer.getvalue())


# ------------------------------------------------------------------ page
def _e(value: Any) -> str:
  return html.escape(str(value))


def _table(rows: List[List[Any]], head: Optional[List[str]] = None) -> str:
  out = ['<table>']
  if head:
    out.append('<tr>' + ''.join(f'<th>{_e(h)}</th>' for h in head) + '</tr>')
  for row in rows:
    out.append('<tr>' + ''.join(f'<td>{c}</td>' for c in row) + '</tr>')
  out.append('</table>')
  return '\n'.join(out)


def _num(value: Any, digits: int = 4) -> str:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return f'{value:,.{digits}f}' if isinstance(value, float) else f'{value:,}'
  return '—' if value in (None, '') else _e(value)


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; max-width: 1250px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 22px; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #e4e4e8;
text-align: left; vertical-align: top; } th { color: #6b6b70; font-weight: 500; }
.blessed { color: #1a7f37; font-weight: 700; } .refused, .failed { color: #b3261e; font-weight: 700; }
pre { white-space: pre-wrap; background: #f4f4f6; padding: 6px 8px; margin: 0; font-size: 12px; }
code { font-size: 12px; } img { max-width: 100%; border: 1px solid #e4e4e8; }
"""


def _thresholds(evaluation: Dict[str, Any]) -> List[tuple]:
  """(label, loss) of the gate's absolute limits, as evaluation.json records them."""
  out = []
  if evaluation.get('ratio_threshold') is not None:
    out.append((f'{evaluation.get("max_eval_loss_ratio")} x unigram entropy',
                evaluation['ratio_threshold']))
  if evaluation.get('max_eval_loss'):
    out.append(('max_eval_loss', evaluation['max_eval_loss']))
  return out


def _rules(evaluation: Dict[str, Any]) -> List[str]:
  rules = []
  if evaluation.get('ratio_threshold') is not None:
    rules.append(f'eval loss ≤ {_num(evaluation.get("max_eval_loss_ratio"), 2)} × the eval '
                 f'text\'s unigram entropy {_num(evaluation.get("unigram_entropy"))} = '
                 f'{_num(evaluation["ratio_threshold"])}')
  if evaluation.get('max_eval_loss'):
    rules.append(f'eval loss ≤ {_num(evaluation["max_eval_loss"])}')
  if evaluation.get('baseline_eval_loss') is not None:
    rules.append(f'eval loss ≤ baseline + {_num(evaluation.get("regression_tolerance"))}')
  if evaluation.get('eval_loss_finite') is not None:
    rules.append('finite')
  return rules or ['—']


def render(run: runs.RunRecord, plots_file: str = PLOTS_FILE) -> str:
  history, metrics, evaluation = run.history(), run.metrics(), run.evaluation()
  corpus, vocab = run.corpus(), run.vocabulary()
  config = metrics.get('config') or run.trainer_config
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>Run {_e(run.run_id)}'
           f'</title><style>{_CSS}</style></head><body>',
           f'<h1>Char-RNN pipeline run {_e(run.run_id)}</h1>']
  state = run.state
  summary = [['started', _e(run.started_text())],
             ['wall time', f'{run.finished - run.started:,.1f} s'],
             ['state', f'<span class="{state}">{_e(state)}</span>'
              + (f' in {_e(run.failed_component)}' if run.failed_component else '')],
             ['preset', _e(run.preset())]]
  parts.append(_table(summary))

  parts.append('<h2>The gate</h2>')
  if evaluation:
    blessed = evaluation.get('blessed')
    verdict = ('<span class="blessed">BLESSED</span>' if blessed
               else '<span class="refused">NOT BLESSED</span>')
    base = evaluation.get('baseline_eval_loss')
    rows = [['decision', verdict + ''.join(f'<br>{_e(r)}' for r in evaluation.get('reasons', []))],
            ['candidate eval loss', f'{_num(evaluation.get("eval_loss"))} nats/char '
             f'({_num(evaluation.get("bits_per_char"))} bits/char, '
             f'{_num(evaluation.get("eval_windows"), 0)} eval windows)'],
            ['baseline (served) eval loss',
             (f'{_num(base)} nats/char (version {_e(run.baseline_version())})'
              if base is not None else 'none: nothing was served yet')],
            ['rule', ' and '.join(_rules(evaluation))],
            ['pushed version', _e(run.pushed_version()) if run.pushed_version()
             else 'nothing pushed']]
    parts.append(_table(rows))
  else:
    parts.append('<p>The gate did not run.</p>')

  parts.append('<h2>Training</h2>')
  rate = _steps_per_second(history, metrics)
  budget = history.get('time_budget_seconds', config.get('max_train_seconds'))
  rows = [['steps', _num(metrics.get('train_steps'), 0)],
          ['epochs', _num(metrics.get('epochs_run'), 0)],
          ['training time', f'{_num(metrics.get("train_seconds"), 1)} s'
           + (f' of a {budget:,.0f} s budget' if budget else ' (no time budget)')],
          ['steps/s', _num(rate, 2)],
          ['stopped because', _e(history.get('stop_reason') or '—')],
          ['model', _e(', '.join(f'{k}={config[k]}' for k in
                                 ('rnn_type', 'rnn_units', 'num_layers', 'embedding_dim',
                                  'batch_size', 'seq_length', 'learning_rate', 'lr_schedule')
                                 if k in config))],
          ['precision', _e(metrics.get('precision', '—'))],
          ['model size', _e(metrics.get('rnn_units_reason', '—'))],
          ['start', _e(metrics.get('start', '—'))],
          ['history from', _e(history.get('source', '—'))],
          ['TensorBoard', f'<code>{_e(run.model_run_dir() or "—")}</code> '
           '(<code>make tensorboard</code>)']]
  parts.append(_table(rows))
  parts.append(f'<p><img src="{_e(plots_file)}" alt="loss, learning rate, time budget, gate, '
               'wall time plots"></p>')

  epochs = history.get('epochs') or []
  if epochs:
    parts.append('<h2>Per epoch</h2>')
    parts.append(_table([[_num(e.get('epoch'), 0), _num(e.get('loss')), _num(e.get('val_loss')),
                          f'<pre>{_e(e.get("sample", ""))}</pre>'] for e in epochs],
                        ['epoch', 'train loss', 'eval loss', 'sample']))

  parts.append('<h2>Corpus</h2>')
  printable = ''.join(t for t in vocab[1:]).replace('\n', '⏎')
  parts.append(_table([
      ['sources', _e(corpus.get('sources', '—'))],
      ['characters', _num(corpus.get('num_chars'), 0)],
      ['fingerprint', f'<code>{_e(corpus.get("fingerprint", "—"))}</code>'],
      ['train / eval windows', f'{_num(run.prop("WindowGen", "examples", "num_windows_train"), 0)}'
       f' / {_num(run.prop("WindowGen", "examples", "num_windows_eval"), 0)}'],
      ['vocabulary', f'{len(vocab)} symbols ([UNK] + {len(vocab) - 1} characters): '
       f'<code>{_e(printable)}</code>' if vocab else '—']]))

  parts.append('<h2>Components</h2>')
  parts.append(_table([[_e(c.name), f'<span class="{_e(c.state)}">{_e(c.state)}</span>',
                        f'{c.seconds:,.1f} s'] for c in run.components],
                      ['component', 'state', 'wall time']))
  parts.append('</body></html>')
  return '\n'.join(parts)


def write_report(metadata_path: str, report_root: str, run_id: Optional[str] = None) -> str:
  """Writes <report_root>/<run id>/report.html and plots.png; returns the HTML's path."""
  store = runs.open_store(metadata_path)
  run = runs.read_run(store, run_id)
  directory = os.path.join(report_root, _safe(run.run_id))
  os.makedirs(directory, exist_ok=True)
  plot(run, os.path.join(directory, PLOTS_FILE))
  path = os.path.join(directory, REPORT_FILE)
  _atomic_write(path, render(run).encode('utf-8'))
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output-dir', default=configs.OUTPUT_DIR)
  parser.add_argument('--run-id', default=None, help='default: the newest run')
  parser.add_argument('--list', action='store_true', help='print the run ids and exit')
  parser.add_argument('--path', action='store_true',
                      help='print the report\'s path, writing it only if it is missing')
  parser.add_argument('--logdir', action='store_true',
                      help='print the run\'s TensorBoard log directory (its ModelRun) and exit')
  args = parser.parse_args(argv)
  metadata_path = configs.metadata_path(args.output_dir)
  try:
    store = runs.open_store(metadata_path)
    if args.list:
      print('\n'.join(runs.run_ids(store)))
      return 0
    run = runs.read_run(store, args.run_id)
    if args.logdir:
      if not run.model_run_dir():
        raise runs.NoRunsError(f'run {run.run_id} has no Trainer logs (it stopped before)')
      print(run.model_run_dir())
      return 0
    existing = os.path.join(reports_dir(args.output_dir), _safe(run.run_id), REPORT_FILE)
    if args.path and os.path.exists(existing):
      print(existing)
      return 0
    print(write_report(metadata_path, reports_dir(args.output_dir), run.run_id))
  except runs.NoRunsError as e:
    print(f'pipeline.report: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
