"""Scale-out figures: ingest and windowing MB/s and peak RSS per process, by runner and size.

  python -m bench.scale [--sizes 20,100] [--layouts files,big] [--runners direct1,direct2,dask2]

For each size (MB) it generates two corpora (`bench/windowing/corpus.py`'s
perturbed Shakespeare, ~1 line in 8 with non-ASCII and decomposed accents):
`files`, 8 files of size/8, and `big`, one file (cut into byte ranges by
CorpusIngest). Each (corpus, runner) runs in a fresh process
(`bench/scale/worker.py`): the DirectRunner with 1 worker (in_memory), the
DirectRunner with 2 workers (multi_processing), and Beam's Dask runner on a
loopback dask.distributed cluster with 2 worker processes (started and
warmed up outside the timing). Runners of one corpus run back to back, so
they see about the same machine load. Writes bench/results/scale.json and prints
the table. Linear scaling shows as MB/s that stays put as the size grows; flat
memory as peak RSS per process that does too. Default sizes keep it near 10
minutes on 2 cores; `--sizes 100,1000` gives the issue's figures.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import common
from bench.windowing import corpus as corpus_lib

FILES = 8


def _corpora(size_mb: float, layouts, root: str):
  out = {}
  if 'big' in layouts:
    path = os.path.join(root, f'big-{size_mb:g}MB', 'corpus.txt')
    corpus_lib.generate(common.CORPUS_PATH, path, size_mb, seed=1)
    out['big'] = [path]
  if 'files' in layouts:
    paths = []
    for i in range(FILES):
      path = os.path.join(root, f'files-{size_mb:g}MB', f'part-{i:02d}.txt')
      corpus_lib.generate(common.CORPUS_PATH, path, size_mb / FILES, seed=100 + i)
      paths.append(path)
    out['files'] = paths
  return out


def _measure(runner: str, sources, workdir: str, timeout: float):
  cmd = [sys.executable, '-m', 'bench.scale.worker', '--runner', runner, '--workdir', workdir,
         *sources]
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=common.REPO_DIR, capture_output=True, text=True,
                        timeout=timeout, check=False)
  wall = time.perf_counter() - t
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      result = json.loads(line[len('RESULT '):])
      result['process_wall_seconds'] = round(wall, 1)
      return result
  raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')


TRAINING_FILES = ('train_workers_gru256.json', 'train_workers.json')   # bench.train.workers


def _training_figures():
  """Multi-worker training (bench.train.workers), by result file, if it has been run."""
  out = {}
  for name in TRAINING_FILES:
    path = os.path.join(common.RESULTS_DIR, name)
    if os.path.exists(path):
      with open(path) as f:
        result = json.load(f)
      out[name] = {k: result.get(k) for k in ('date', 'code_version', 'command', 'overrides',
                                              'threads_per_worker_when_2', 'loadavg_start',
                                              'loadavg_end', 'summary')}
  return out or None


def scaling(rows):
  """Per (layout, runner) run at several sizes: how time per MB and peak memory change
  from the smallest size to the largest (1.0: linear time, flat memory)."""
  out = []
  for key in sorted({(r['layout'], r['runner']) for r in rows}):
    mine = sorted((r for r in rows if (r['layout'], r['runner']) == key),
                  key=lambda r: r['size_mb'])
    if len(mine) < 2:
      continue
    small, large = mine[0], mine[-1]

    def ratio(field, small=small, large=large):
      a, b = small[field], large[field]
      return round(b / a, 2) if a and b else None

    def peak(row, stage):
      return max(v for v in (row[f'{stage}_driver_mib'], row[f'{stage}_worker_mib']) if v)
    out.append({'layout': key[0], 'runner': key[1],
                'sizes_mb': [small['size_mb'], large['size_mb']],
                'ingest_s_per_mb_ratio': round((large['ingest_s'] / large['size_mb'])
                                               / (small['ingest_s'] / small['size_mb']), 2),
                'window_s_per_mb_ratio': round((large['window_s'] / large['size_mb'])
                                               / (small['window_s'] / small['size_mb']), 2),
                'ingest_peak_mib_ratio': round(peak(large, 'ingest') / peak(small, 'ingest'), 2),
                'window_peak_mib_ratio': round(peak(large, 'window') / peak(small, 'window'), 2)})
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--sizes', default='20,100', help='corpus sizes in MB, comma-separated')
  p.add_argument('--layouts', default='files,big')
  p.add_argument('--runners', default='direct1,direct2,dask2')
  p.add_argument('--data_dir', default=os.path.join(tempfile.gettempdir(), 'charrnn-bench-scale'))
  p.add_argument('--timeout', type=float, default=3600)
  p.add_argument('--training-only', action='store_true',
                 help='only refresh the multi-worker training figures in --output from '
                      'bench.train.workers\' latest results (nothing is measured)')
  p.add_argument('--caps', default='',
                 help='runner=MB,...: the largest size a runner is run at (e.g. direct2=100: '
                      'the multi_processing DirectRunner runs ~1 MB/s here, hours at 1 GB); '
                      'skipped rows are listed in the results')
  p.add_argument('--output', default=os.path.join(common.RESULTS_DIR, 'scale.json'))
  args = p.parse_args()
  if args.training_only:
    with open(args.output) as f:
      results = json.load(f)
    results['training'] = _training_figures()
    results['notes'] = [n for n in results.get('notes', [])
                        if not n.startswith('multi-worker training')] + [
                            'multi-worker training chars/s: ' + ', '.join(results['training'] or
                                                                          ['missing'])
                            + ' (bench.train.workers; refreshed with --training-only)']
    with open(args.output + '.tmp', 'w') as f:
      json.dump(results, f, indent=1)
      f.write('\n')
    os.replace(args.output + '.tmp', args.output)
    print(f'training figures in {args.output}: {sorted(results["training"] or [])}')
    return
  sizes = [float(s) for s in args.sizes.split(',')]
  layouts = args.layouts.split(',')
  runners = args.runners.split(',')

  caps = {k.strip(): float(v) for k, _, v in
          (item.partition('=') for item in args.caps.split(',') if item.strip())}
  run = common.Run('scale')
  rows, skipped = [], []
  for size in sizes:
    corpora = _corpora(size, layouts, args.data_dir)
    for layout, sources in corpora.items():
      for runner in runners:
        if size > caps.get(runner, float('inf')):
          skipped.append({'size_mb': size, 'layout': layout, 'runner': runner,
                          'why': f'--caps {runner}={caps[runner]:g}'})
          continue
        load = common.loadavg()
        r = _measure(runner, sources, os.path.join(args.data_dir, 'work'), args.timeout)
        row = {'size_mb': size, 'layout': layout, 'files': len(sources), 'runner': runner,
               'loadavg_1m': load[0],
               'ingest_mb_s': r['ingest']['mb_per_s'], 'ingest_s': r['ingest']['seconds'],
               'ingest_driver_mib': r['ingest']['driver_peak_mib'],
               'ingest_worker_mib': r['ingest']['worker_peak_mib'],
               'window_mb_s': r['window']['mb_per_s'], 'window_s': r['window']['seconds'],
               'window_driver_mib': r['window']['driver_peak_mib'],
               'window_worker_mib': r['window']['worker_peak_mib'],
               'raw': r}
        rows.append(row)
        print(f'{size:g} MB {layout:5s} {runner:7s} ingest {row["ingest_mb_s"]:6.1f} MB/s '
              f'window {row["window_mb_s"]:6.1f} MB/s (load {load[0]})', flush=True)
  columns = ['size_mb', 'layout', 'runner', 'ingest_mb_s', 'ingest_driver_mib',
             'ingest_worker_mib', 'window_mb_s', 'window_driver_mib', 'window_worker_mib',
             'loadavg_1m']
  headers = ['MB', 'corpus', 'runner', 'ingest MB/s', 'ingest peak MiB driver',
             'ingest peak MiB/worker', 'window MB/s', 'window peak MiB driver',
             'window peak MiB/worker', 'load 1m']
  text = common.table(rows, columns, headers)
  training = _training_figures()
  notes = [
      'runner: direct1 = DirectRunner in_memory, 1 worker; direct2 = DirectRunner '
      'multi_processing, 2 worker processes; dask2 = Beam DaskRunner on a loopback '
      'dask.distributed cluster, 2 worker processes x 1 thread (cluster start and worker '
      'imports not timed; direct2 starts its workers inside every pipeline, timed).',
      'peak MiB: the largest RSS any single process reached during the stage (worker = '
      'largest of Beam/Dask worker processes; "-" when the driver did all the work).',
      'corpus: files = 8 files of size/8; big = one file, cut into 16 MiB byte ranges.',
      'multi-worker training chars/s: ' + (', '.join(training) + ' (bench.train.workers), '
                                          'their summaries copied here as "training"'
                                          if training else
                                          'missing: no multi-worker training benchmark yet'),
  ]
  growth = scaling(rows)
  if growth:
    text += '\n\nFrom the smallest size to the largest (1.0 = time linear in size, memory flat):\n'
    text += common.table(growth, ['layout', 'runner', 'sizes_mb', 'ingest_s_per_mb_ratio',
                                  'window_s_per_mb_ratio', 'ingest_peak_mib_ratio',
                                  'window_peak_mib_ratio'],
                         ['corpus', 'runner', 'MB', 'ingest s/MB x', 'window s/MB x',
                          'ingest peak MiB x', 'window peak MiB x'])
  if skipped:
    notes.append('not run: ' + '; '.join(f'{r["runner"]} at {r["size_mb"]:g} MB {r["layout"]} '
                                         f'({r["why"]})' for r in skipped))
  path = run.write({'settings': {'sizes_mb': sizes, 'layouts': layouts, 'runners': runners,
                                 'caps_mb': caps,
                                 'files_per_corpus': FILES, 'seq_length': 100,
                                 'shard_chars': 4_000_000, 'normalization': 'NFC'},
                    'versions': common.versions('apache_beam', 'dask', 'distributed',
                                                'tensorflow', 'tfx'),
                    'rows': rows, 'skipped': skipped, 'scaling': growth, 'training': training, 'notes': notes, 'table': text},
                   args.output)
  print()
  print(text)
  for n in notes:
    print('- ' + n)
  print(f'\nwrote {path}')


if __name__ == '__main__':
  main()
