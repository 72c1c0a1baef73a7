"""WindowGen throughput and peak memory on a large generated corpus.

  .venv/bin/python -m bench.windowing                    # 50 MB and 200 MB, ~5 min
  .venv/bin/python -m bench.windowing --sizes=5 --modes=in_memory   # smoke, ~1 min

For each corpus size (MB of UTF-8, generated under --tmpdir by
`bench.windowing.corpus`, seeded), each stage runs in its own process, whose
process tree's RSS is polled every 50 ms (psutil):
  ingest   CorpusIngest's `ingest()` (decode, NFC, 4M-character shards)
  vocab    VocabularyGen's executor
  window   WindowGen's executor (Beam DirectRunner) per --modes x --write_tasks:
             in_memory          --direct_running_mode=in_memory --direct_num_workers=1
                                (the pipeline's default BEAM_PIPELINE_ARGS)
             multi_processing   --direct_running_mode=multi_processing --direct_num_workers=2
           write_task components: `components.window_gen._write_task` as it is (the
           flag names the variant so a candidate can be raced against it; the
           13:14 run's `fast` candidate was adopted in efeb60c and removed here)
Stage seconds exclude the process' imports (reported separately). MB/s is corpus
bytes / window-stage seconds. Window variants of one size run back to back, in
an order rotated per size, and are compared as ratios.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List

from bench import common
from bench.windowing import corpus as corpus_lib

MODES = {
    'in_memory': '--direct_running_mode=in_memory --direct_num_workers=1',
    'multi_processing': '--direct_running_mode=multi_processing --direct_num_workers=2',
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='50,200', help='corpus sizes in MB (10^6 bytes)')
  p.add_argument('--modes', default='in_memory,multi_processing')
  p.add_argument('--write_tasks', default='components')
  p.add_argument('--source', default=common.CORPUS_PATH)
  p.add_argument('--tmpdir', default='/tmp/bench-windowing')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--keep', action='store_true', help='keep the stage outputs')
  p.add_argument('--output', default=os.path.join(common.RESULTS_DIR, 'windowing.json'))
  return p.parse_args(argv)


def run_stage(args: List[str]) -> Dict[str, Any]:
  cmd = [sys.executable, '-m', 'bench.windowing.worker'] + args
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=common.REPO_DIR, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  with common.PeakRss(proc.pid) as peak:
    out, err = proc.communicate()
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{err[-3000:]}')
  line = [l for l in out.splitlines() if l.startswith('RESULT ')][-1]
  result = json.loads(line[len('RESULT '):])
  result.update({'process_wall_seconds': round(wall, 2), 'peak_rss_tree_mib': peak.peak_mib,
                 'peak_processes': peak.peak_processes})
  result['seconds'] = round(result['seconds'], 2)
  result['import_seconds'] = round(result['import_seconds'], 2)
  return result


def main(argv=None):
  args = parse_args(argv)
  run = common.Run('windowing')
  sizes = [float(s) for s in args.sizes.split(',')]
  modes = [m for m in args.modes.split(',') if m]
  tasks = [t for t in args.write_tasks.split(',') if t]
  rows, stages_out = [], []
  for n, size in enumerate(sizes):
    path = os.path.join(args.tmpdir, f'corpus-{size:g}mb-seed{args.seed}.txt')
    t = time.perf_counter()
    nbytes = corpus_lib.generate(args.source, path, size, args.seed)
    gen_s = time.perf_counter() - t
    mb = nbytes / 1e6
    workdir = os.path.join(args.tmpdir, f'work-{size:g}mb')
    shutil.rmtree(workdir, ignore_errors=True)
    print(f'{size:g} MB corpus ({nbytes:,} bytes, {gen_s:.1f} s to generate): {path}', flush=True)
    ingest = run_stage(['ingest', workdir, '--source', path])
    vocab = run_stage(['vocab', workdir])
    for st in (ingest, vocab):
      st.update({'size_mb': round(mb, 1), 'mb_per_s': round(mb / st['seconds'], 1)})
      stages_out.append(st)
      print(f'  {st["stage"]}: {st["seconds"]} s ({st["mb_per_s"]} MB/s), peak RSS '
            f'{st["peak_rss_tree_mib"]} MiB, imports {st["import_seconds"]} s', flush=True)
    combos = [(m, t) for t in tasks for m in modes]
    combos = combos[n % len(combos):] + combos[:n % len(combos)]
    for mode, task in combos:
      sub = f'examples-{mode}-{task}'
      st = run_stage(['window', workdir, '--beam_args', MODES[mode], '--write_task', task,
                      '--examples_subdir', sub])
      ex_bytes = sum(os.path.getsize(os.path.join(dp, f))
                     for dp, _, fs in os.walk(os.path.join(workdir, sub)) for f in fs)
      row = {'size_mb': round(mb, 1), 'mode': mode, 'write_task': task,
             'seconds': st['seconds'], 'mb_per_s': round(mb / st['seconds'], 1),
             'peak_rss_tree_mib': st['peak_rss_tree_mib'],
             'peak_processes': st['peak_processes'],
             'import_seconds': st['import_seconds'], 'cpu_seconds': st['cpu_seconds'],
             'windows': st['windows'], 'examples_mb': round(ex_bytes / 1e6, 1),
             'beam_args': MODES[mode]}
      rows.append(row)
      print(f'  window {mode} {task}: {row["seconds"]} s ({row["mb_per_s"]} MB/s), peak RSS '
            f'{row["peak_rss_tree_mib"]} MiB over {row["peak_processes"]} processes, '
            f'{row["examples_mb"]} MB written', flush=True)
    if not args.keep:
      shutil.rmtree(workdir, ignore_errors=True)

  base = {(r['size_mb'], r['mode']): r for r in rows if r['write_task'] == 'components'}
  default = {r['size_mb']: r for r in rows
             if r['write_task'] == 'components' and r['mode'] == 'in_memory'}
  for r in rows:
    b = base.get((r['size_mb'], r['mode']))
    r['speedup_vs_components_same_mode'] = round(b['seconds'] / r['seconds'], 2) if b else None
    d = default.get(r['size_mb'])
    r['speedup_vs_default'] = round(d['seconds'] / r['seconds'], 2) if d else None
  results = {'settings': {'sizes_mb': sizes, 'modes': modes, 'write_tasks': tasks,
                          'seed': args.seed, 'seq_length': 100, 'stride': 100,
                          'shard_chars': 4_000_000, 'normalization': 'NFC'},
             'versions': common.versions('apache_beam', 'tensorflow', 'tfx'),
             'memory_note': 'peak RSS summed over the stage process and its descendants '
                            '(Beam workers), polled every 50 ms; shared library pages '
                            'count once per process, so it is an upper bound',
             'stages': stages_out, 'window': rows}
  path = run.write(results, args.output)
  print()
  print(common.table(stages_out, ['stage', 'size_mb', 'seconds', 'mb_per_s',
                                  'peak_rss_tree_mib', 'import_seconds']))
  print()
  print(common.table(rows, ['size_mb', 'mode', 'write_task', 'seconds', 'mb_per_s',
                            'speedup_vs_default', 'peak_rss_tree_mib', 'peak_processes',
                            'examples_mb']))
  print(f'wrote {path}')
