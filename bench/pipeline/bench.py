"""The whole `tiny` pipeline on TFX's local engine: cold, then re-run with the cache.

  .venv/bin/python -m bench.pipeline                 # ~2 min
  .venv/bin/python -m bench.pipeline --repeats=1 --startup_repeats=1   # quicker

Each pipeline run is a fresh process (`bench.pipeline.run_once`: imports,
`pipeline.local_runner.build(output_dir, 'tiny', [corpus])`,
`LocalDagRunner().run()`), like `python -m pipeline.local_runner`. Per-component
times come from ML Metadata: each execution's create -> last-update time (ms),
its node context and its state (COMPLETE = ran, CACHED = served from cache).
What the components' executions do not cover is the framework's share:
process start-up and imports, pipeline construction, and the orchestration
between executions (input resolution, cache lookups, publishing).

Start-up is measured on its own: the wall time of fresh processes that only
import (python; + tensorflow; + tfx.v1; + pipeline.local_runner), interleaved.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

from bench import common

IMPORTS = {
    'python (no imports)': 'pass',
    'import tensorflow': 'import tensorflow',
    'import tfx.v1': 'from tfx import v1',
    'import pipeline.local_runner (tf, tfx, beam, components)': 'from pipeline import local_runner',
}
STATES = {0: 'UNKNOWN', 1: 'NEW', 2: 'RUNNING', 3: 'COMPLETE', 4: 'FAILED', 5: 'CACHED',
          6: 'CANCELED'}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--preset', default='tiny')
  p.add_argument('--corpus', default=common.CORPUS_PATH)
  p.add_argument('--repeats', type=int, default=2,
                 help='cold+cached pairs, each into a fresh output dir')
  p.add_argument('--startup_repeats', type=int, default=3)
  p.add_argument('--output', default=os.path.join(common.RESULTS_DIR, 'pipeline.json'))
  return p.parse_args(argv)


def startup(repeats: int) -> List[Dict[str, Any]]:
  times = {name: [] for name in IMPORTS}
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  for _ in range(repeats):
    for name, code in IMPORTS.items():
      t = time.perf_counter()
      subprocess.run([sys.executable, '-c', code], cwd=common.REPO_DIR, env=env, check=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      times[name].append(time.perf_counter() - t)
  return [{'process': name, 'min_s': round(min(v), 2), 'median_s': round(sorted(v)[len(v) // 2], 2),
           'all_s': [round(x, 2) for x in v]} for name, v in times.items()]


def run_pipeline(output_dir: str, preset: str, corpus: str) -> Dict[str, Any]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  t0 = time.time()
  proc = subprocess.run([sys.executable, '-m', 'bench.pipeline.run_once', output_dir, preset,
                         corpus], cwd=common.REPO_DIR, env=env, capture_output=True, text=True)
  t1 = time.time()
  if proc.returncode:
    raise RuntimeError(f'pipeline run failed:\n{proc.stderr[-4000:]}')
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  r = json.loads(line[len('RESULT '):])
  return {'launched': t0, 'exited': t1, **r}


def executions(metadata_path: str) -> List[Dict[str, Any]]:
  """Every execution in the store: node id, run id, state, start/end (epoch ms)."""
  from ml_metadata.metadata_store import metadata_store
  from ml_metadata.proto import metadata_store_pb2
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  store = metadata_store.MetadataStore(config)
  types = {t.id: t.name for t in store.get_context_types()}
  out = []
  for e in store.get_executions():
    node = run_id = None
    for c in store.get_contexts_by_execution(e.id):
      if types.get(c.type_id) == 'node':
        node = c.name.split('.', 1)[-1]
      elif types.get(c.type_id) == 'pipeline_run':
        run_id = c.name
    out.append({'node': node, 'run': run_id, 'state': STATES.get(e.last_known_state),
                'start_ms': e.create_time_since_epoch, 'end_ms': e.last_update_time_since_epoch})
  return out


def summarize(run: Dict[str, Any], execs: List[Dict[str, Any]]) -> Dict[str, Any]:
  mine = [e for e in execs if run['built'] * 1000 <= e['start_ms'] <= run['done'] * 1000 + 1]
  mine.sort(key=lambda e: e['start_ms'])
  components = [{'node': e['node'], 'state': e['state'],
                 'seconds': round((e['end_ms'] - e['start_ms']) / 1000, 2),
                 'starts_at_s': round(e['start_ms'] / 1000 - run['built'], 2)} for e in mine]
  in_components = sum(c['seconds'] for c in components)
  run_s = run['done'] - run['built']
  return {
      'process_wall_s': round(run['exited'] - run['launched'], 2),
      'startup_imports_s': round(run['imported'] - run['started'], 2),
      'interpreter_start_s': round(run['started'] - run['launched'], 2),
      'build_s': round(run['built'] - run['imported'], 2),
      'run_s': round(run_s, 2),
      'in_executions_s': round(in_components, 2),
      'orchestration_outside_executions_s': round(run_s - in_components, 2),
      'exit_s': round(run['exited'] - run['done'], 2),
      'components': components,
      're_executed': [c['node'] for c in components if c['state'] == 'COMPLETE'],
      'cached': [c['node'] for c in components if c['state'] == 'CACHED'],
  }


def main(argv=None):
  args = parse_args(argv)
  run = common.Run('pipeline')
  print('start-up (fresh processes, interleaved):', flush=True)
  boot = startup(args.startup_repeats)
  for b in boot:
    print(f'  {b["process"]}: min {b["min_s"]} s, median {b["median_s"]} s', flush=True)

  pairs = []
  for i in range(args.repeats):
    out_dir = tempfile.mkdtemp(prefix='bench-pipeline-')
    from pipeline import configs
    mlmd = configs.metadata_path(out_dir)
    pair = {}
    for kind in ('cold', 'cached'):
      r = run_pipeline(out_dir, args.preset, args.corpus)
      pair[kind] = summarize(r, executions(mlmd))
      print(f'  [{i + 1}] {kind}: {pair[kind]["process_wall_s"]} s process, '
            f'{pair[kind]["run_s"]} s LocalDagRunner.run; re-executed {pair[kind]["re_executed"]}',
            flush=True)
    pairs.append(pair)
    shutil.rmtree(out_dir, ignore_errors=True)

  def best(kind):
    return min(pairs, key=lambda p: p[kind]['process_wall_s'])[kind]

  summary_rows = []
  for kind in ('cold', 'cached'):
    values = [p[kind]['process_wall_s'] for p in pairs]
    b = best(kind)
    summary_rows.append({
        'run': kind, 'process_wall_s': min(values), 'all_runs_s': values,
        'startup_imports_s': b['startup_imports_s'], 'build_s': b['build_s'],
        'run_s': b['run_s'], 'in_executions_s': b['in_executions_s'],
        'orchestration_s': b['orchestration_outside_executions_s'],
        'target_s': 60 if kind == 'cold' else 20,
    })
  comp_rows = []
  nodes = [c['node'] for c in best('cold')['components']]
  for node in nodes:
    row = {'node': node}
    for kind in ('cold', 'cached'):
      match = [c for c in best(kind)['components'] if c['node'] == node]
      row[f'{kind}_s'] = match[0]['seconds'] if match else None
      row[f'{kind}_state'] = match[0]['state'] if match else None
    comp_rows.append(row)
  results = {
      'settings': {'preset': args.preset, 'corpus': os.path.abspath(args.corpus),
                   'repeats': args.repeats, 'engine': 'LocalDagRunner, SQLite MLMD, '
                   'Beam DirectRunner (configs.BEAM_PIPELINE_ARGS)'},
      'versions': common.versions('tfx', 'tensorflow', 'apache_beam'),
      'startup': boot, 'summary': summary_rows, 'components_best_runs': comp_rows,
      'runs': pairs,
      'cached_run_re_executed': best('cached')['re_executed'],
      'note': 'Nodes in cached_run_re_executed ran again on the re-run instead of coming '
              'from the cache: the first run pushed a model, so the baseline node '
              '(ServedModel now; TFX\'s LatestBlessedModel resolver before) yields a new '
              'model, which is a new input to EvaluationGate, and Pusher follows the gate.',
  }
  path = run.write(results, args.output)
  print()
  print(common.table(boot, ['process', 'min_s', 'median_s']))
  print()
  print(common.table(summary_rows, ['run', 'process_wall_s', 'target_s', 'startup_imports_s',
                                    'build_s', 'run_s', 'in_executions_s', 'orchestration_s']))
  print()
  print(common.table(comp_rows, ['node', 'cold_s', 'cold_state', 'cached_s', 'cached_state']))
  print(f'wrote {path}')
