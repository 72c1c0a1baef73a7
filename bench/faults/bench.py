"""Fault injection: SIGKILL the tiny pipeline at random moments, re-run it, check what is left.

  .venv/bin/python -m bench.faults --runs 30         # the figure: bench/results/faults.json
  .venv/bin/python -m bench.faults --runs 2 --no-corruption

Each cycle is what a scheduler does when a machine dies mid-run and the job is
retried:

1. New data: the corpus gets one more line (so every component has work to do,
   nothing is served from the cache), and the pipeline starts as
   `python -m bench.pipeline.run_once OUT tiny CORPUS` (the local runner's
   build + LocalDagRunner, in a fresh process).
2. The cycle's target phase (ingest, windowing, training, gate, push: in turn,
   shuffled) is watched for: a node's execution has started when its output
   directory `<pipeline_root>/<node>/<output>/<execution id>/` appears. After a
   random delay within the phase's length (as long as it took in the last
   complete run, from ML Metadata; PHASE_SPAN_S before there is one) the whole
   process group gets SIGKILL. The phase recorded is the node that was running
   at that moment (the newest execution directory), which is not always the
   target: a short phase may be over before the delay is; `exit` when the run
   had finished its work and was exiting.
3. Checks on what the kill left: ML Metadata opens; every version directory
   under the serving base is complete and loadable; the newest one loads with
   tf.saved_model.load and generates.
4. The same command again. Checks: it exits 0; ML Metadata opens; the Pusher's
   last execution pushed (or the gate refused, with its reasons recorded); the
   newest served version is that push, loads and generates; no version
   directory is incomplete.

A cycle recovers when every check of 3 and 4 passes. After the first cycle
that leaves a complete state, corrupted inputs (in place, the file restored
after), each expected to fail with an error naming the file and to push
nothing:
* a source corpus file with bytes that are not UTF-8 (CorpusIngest);
* a truncated TFRecord shard (train split; eval split) of the newest Examples
  artifact, with the Trainer forced to run again on it (`seed` override);
* a truncated shard of the newest Corpus artifact, with WindowGen forced to run
  again on it (`stride` override).

Counts go to bench/results/faults.json and a table is printed.
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from bench import common

PHASES = ('ingest', 'windowing', 'training', 'gate', 'push')
NODE_PHASE = {'CorpusIngest': 'ingest', 'VocabularyGen': 'vocabulary', 'WindowGen': 'windowing',
              'ServedModel': 'served-model', 'CharRnnTrainer': 'training',
              'EvaluationGate': 'gate', 'Pusher': 'push'}
PHASE_NODE = {phase: node for node, phase in NODE_PHASE.items()}
# About how long each phase lasts with the tiny preset here (s): the kill falls
# at a uniform moment in [0, this) after the phase starts.
PHASE_SPAN_S = {'ingest': 1.5, 'windowing': 3.0, 'training': 10.0, 'gate': 4.0, 'push': 0.5}
RUN_TIMEOUT_S = 900


# ------------------------------------------------------------------ running
def pipeline_command(out: str, corpus: str) -> List[str]:
  return [sys.executable, '-m', 'bench.pipeline.run_once', out, 'tiny', corpus]


def _env(overrides: str = '') -> Dict[str, str]:
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore',
              CHAR_RNN_OVERRIDES=overrides, CHAR_RNN_WARM_START='0')


def run_pipeline(out: str, corpus: str, log_path: str, overrides: str = '') -> Dict[str, Any]:
  """One complete run; returns its exit code and the log's tail."""
  with open(log_path, 'w') as log:
    result = subprocess.run(pipeline_command(out, corpus), cwd=common.REPO_DIR, env=_env(overrides),
                            stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
  with open(log_path, errors='replace') as f:
    text = f.read()
  return {'returncode': result.returncode, 'log': text}


def execution_dirs(pipeline_root: str) -> Dict[int, str]:
  """{execution id: node} from `<root>/<node>/<output key>/<execution id>/`."""
  out = {}
  for node in NODE_PHASE:
    for path in glob.glob(os.path.join(pipeline_root, node, '*', '*')):
      name = os.path.basename(path)
      if name.isascii() and name.isdigit():
        out[int(name)] = node
  return out


def running_node(pipeline_root: str, after: int) -> Optional[str]:
  """The node whose execution started last, among those with an id above `after`."""
  started = {i: n for i, n in execution_dirs(pipeline_root).items() if i > after}
  return started[max(started)] if started else None


def killed_run(out: str, corpus: str, pipeline_root: str, phase: str, log_path: str,
               rng: random.Random, overrides: str = '',
               spans: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
  """Starts the pipeline, SIGKILLs its process group in `phase` (after a random delay)."""
  after = max(execution_dirs(pipeline_root), default=0)
  delay = rng.uniform(0, dict(PHASE_SPAN_S, **(spans or {}))[phase])
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(pipeline_command(out, corpus), cwd=common.REPO_DIR,
                            env=_env(overrides),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen_at = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
      while proc.poll() is None and time.monotonic() < deadline:
        node = running_node(pipeline_root, after)
        if seen_at is None and node is not None and \
            list(NODE_PHASE).index(node) >= list(NODE_PHASE).index(PHASE_NODE[phase]):
          seen_at = time.monotonic()
        if seen_at is not None and time.monotonic() - seen_at >= delay:
          at = running_node(pipeline_root, after)
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
          with open(log_path, errors='replace') as f:
            finished = 'RESULT ' in f.read()    # run_once's last line: only the exit was left
          return {'target': phase, 'delay_s': round(delay, 2), 'killed': True,
                  'phase': 'exit' if finished else NODE_PHASE.get(at, 'start-up'), 'node': at}
        time.sleep(0.02)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  return {'target': phase, 'delay_s': round(delay, 2), 'killed': False,
          'returncode': proc.returncode}


# ------------------------------------------------------------------- checks
def _metadata_path(out: str) -> str:
  from pipeline import configs
  return configs.metadata_path(out)


def _store(out: str):
  from ml_metadata.metadata_store import metadata_store
  from tfx import v1 as tfx
  return metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(_metadata_path(out)))


def _serving_base(out: str) -> str:
  from pipeline import configs
  return os.path.join(configs.serving_model_dir(out), configs.SERVING_MODEL_NAME)


def _generates(version_dir: str) -> str:
  import tensorflow as tf
  loaded = tf.saved_model.load(version_dir)
  text = loaded.signatures['generate'](
      prompt=tf.constant(['ROMEO:']), num_chars=tf.constant(40), temperature=tf.constant(1.0),
      seed=tf.constant(7, tf.int64))['text'].numpy()[0].decode('utf-8')
  if len(text) != 40:
    raise AssertionError(f'{version_dir} generated {len(text)} characters, not 40')
  return text


def check_state(out: str) -> Dict[str, Any]:
  """What must hold at any moment: ML Metadata opens, every version is whole, the newest serves."""
  from components import pusher
  problems = []
  try:
    executions = len(_store(out).get_executions()) if os.path.exists(_metadata_path(out)) else 0
  except Exception as e:  # pylint: disable=broad-except
    executions = None
    problems.append(f'ML Metadata does not open: {type(e).__name__}: {e}')
  base = _serving_base(out)
  versions = pusher.version_names(base)
  for _, path in versions:
    reason = pusher.incomplete_reason(path)
    if reason:
      problems.append(f'incomplete version {path}: {reason}')
  newest = pusher.latest_complete_version(base)
  if newest is not None:
    try:
      _generates(newest)
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f'newest version {newest} does not serve: {type(e).__name__}: {e}')
  tmp_dirs = [n for n in (os.listdir(base) if os.path.isdir(base) else [])
              if n.startswith(pusher.TMP_PREFIX)]
  return {'ok': not problems, 'problems': problems, 'executions': executions,
          'versions': len(versions), 'newest': newest, 'tmp_dirs': len(tmp_dirs)}


def last_push(out: str) -> Dict[str, Any]:
  """The Pusher's newest execution: state, and its PushedModel's properties."""
  from ml_metadata.proto import metadata_store_pb2
  store = _store(out)
  [ctx] = [c for c in store.get_contexts_by_type('node') if c.name.endswith('.Pusher')] or [None]
  if ctx is None:
    return {'state': None}
  execution = max(store.get_executions_by_context(ctx.id), key=lambda e: e.id)
  state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
  events = store.get_events_by_execution_ids([execution.id])
  outputs = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
  info: Dict[str, Any] = {'state': state}
  for artifact in store.get_artifacts_by_id(outputs):
    props = artifact.custom_properties
    info['pushed'] = props['pushed'].int_value if 'pushed' in props else None
    if 'pushed_destination' in props:
      info['destination'] = props['pushed_destination'].string_value
  return info


def phase_seconds(out: str) -> Dict[str, float]:
  """How long each phase's newest completed execution took (ML Metadata times)."""
  from ml_metadata.proto import metadata_store_pb2
  store = _store(out)
  spans = {}
  for ctx in store.get_contexts_by_type('node'):
    phase = NODE_PHASE.get(ctx.name.split('.')[-1])
    done = [e for e in store.get_executions_by_context(ctx.id)
            if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    if phase in PHASE_SPAN_S and done:
      e = max(done, key=lambda e: e.id)
      spans[phase] = max(0.1, (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1e3)
  return spans


def last_evaluation(out: str) -> Optional[Dict[str, Any]]:
  blessings = sorted(_store(out).get_artifacts_by_type('ModelBlessing'), key=lambda a: a.id)
  if not blessings:
    return None
  try:
    with open(os.path.join(blessings[-1].uri, 'evaluation.json')) as f:
      return json.load(f)
  except OSError:
    return None


def check_recovered(out: str, rerun: Dict[str, Any]) -> Dict[str, Any]:
  state = check_state(out)
  problems = list(state['problems'])
  if rerun['returncode'] != 0:
    problems.append(f'the re-run exited {rerun["returncode"]}: {rerun["log"][-1500:]}')
  push = last_push(out) if rerun['returncode'] == 0 else {}
  refused = None
  if rerun['returncode'] == 0:
    if push.get('state') not in ('COMPLETE', 'CACHED'):
      problems.append(f'the Pusher\'s last execution is {push.get("state")}')
    elif push.get('pushed') != 1:
      evaluation = last_evaluation(out) or {}
      refused = evaluation.get('reasons')
      if not refused:
        problems.append('nothing was pushed, and the gate gave no reason')
    elif os.path.normpath(push.get('destination', '')) != os.path.normpath(state['newest'] or ''):
      problems.append(f'the push ({push.get("destination")}) is not the newest complete '
                      f'version ({state["newest"]})')
  return {'ok': not problems, 'problems': problems, 'push': push, 'refused': refused,
          'state': state}


# --------------------------------------------------------------- corruption
def _newest_artifact(out: str, type_name: str):
  return max(_store(out).get_artifacts_by_type(type_name), key=lambda a: a.id)


def _truncate(path: str) -> None:
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(size // 2)


def _consumers(out: str, artifact_id: int, after_execution: int) -> List[str]:
  """Nodes whose executions newer than `after_execution` read the artifact."""
  from ml_metadata.proto import metadata_store_pb2
  store = _store(out)
  events = store.get_events_by_artifact_ids([artifact_id])
  ids = {e.execution_id for e in events
         if e.type == metadata_store_pb2.Event.INPUT and e.execution_id > after_execution}
  nodes = []
  for ctx in store.get_contexts_by_type('node'):
    if ids & {e.id for e in store.get_executions_by_context(ctx.id)}:
      nodes.append(ctx.name.split('.')[-1])
  return sorted(nodes)


def corruption_case(name: str, out: str, corpus: str, work: str,
                    base_overrides: str = '') -> Dict[str, Any]:
  """Corrupts one input of the pipeline in `out`, re-runs; it must fail naming the file.

  Done in place (a copy of `out` would keep ML Metadata's absolute URIs into
  `out`), with the corrupted file restored afterwards. An artifact is corrupted
  with an override that makes the node reading it run again while everything
  upstream stays cached; the case records which nodes really read it.
  """
  case_corpus, overrides, artifact_id = corpus, base_overrides, None
  backup = os.path.join(work, f'backup-{name}')
  if name == 'source-not-utf8':
    case_corpus = os.path.join(work, 'corpus-not-utf8.txt')
    with open(corpus, 'rb') as f:
      data = f.read()
    with open(case_corpus, 'wb') as f:
      f.write(data[:len(data) // 2] + b'\xff\xfe\xc3' + data[len(data) // 2:])
    target = case_corpus
  elif name in ('train-shard-truncated', 'eval-shard-truncated'):
    examples = _newest_artifact(out, 'Examples')
    artifact_id = examples.id
    split = name.split('-')[0]
    target = sorted(glob.glob(os.path.join(examples.uri, f'Split-{split}', '*')))[0]
    overrides = ','.join(filter(None, [base_overrides, 'seed=12345']))  # the Trainer re-runs
  elif name == 'corpus-shard-truncated':
    corpus_artifact = _newest_artifact(out, 'charrnn.Corpus')
    artifact_id = corpus_artifact.id
    target = sorted(glob.glob(os.path.join(corpus_artifact.uri, 'corpus-*')))[0]
    overrides = ','.join(filter(None, [base_overrides, 'stride=60']))   # WindowGen re-runs
  else:
    raise ValueError(name)
  if artifact_id is not None:
    shutil.copyfile(target, backup)
    _truncate(target)
  last_execution = max((e.id for e in _store(out).get_executions()), default=0)
  before = check_state(out)
  try:
    result = run_pipeline(out, case_corpus, os.path.join(work, f'corrupt-{name}.log'), overrides)
  finally:
    if artifact_id is not None:
      shutil.copyfile(backup, target)
  after = check_state(out)
  named = target in result['log'] or os.path.basename(target) in result['log']
  pushed = after['versions'] != before['versions']
  outcome = {'case': name, 'file': target, 'returncode': result['returncode'],
             'names_file': named, 'pushed': pushed, 'state_ok': after['ok'],
             'read_by': (_consumers(out, artifact_id, last_execution)
                         if artifact_id is not None else ['CorpusIngest']),
             'ok': result['returncode'] != 0 and named and not pushed and after['ok']}
  if not outcome['ok']:
    outcome['log_tail'] = result['log'][-1200:]
  return outcome


CORRUPTION_CASES = ('source-not-utf8', 'train-shard-truncated', 'eval-shard-truncated',
                    'corpus-shard-truncated')


# --------------------------------------------------------------------- main
def cycle_corpus(base_text: str, work: str, i: int) -> str:
  """The corpus of cycle i: the base text and one more line (new data every cycle)."""
  path = os.path.join(work, 'corpus.txt')
  marker = ''.join(chr(ord('a') + int(d)) for d in str(i))
  with open(path, 'w', encoding='utf-8') as f:
    f.write(base_text + f'\nFAULT RUN {marker}\n')
  return path


def run(runs: int, seed: int, work: str, base_corpus: str, corruption: bool,
        phases=PHASES, verbose: bool = True, overrides: str = '', corpus_chars: int = 0,
        spans: Optional[Dict[str, float]] = None,
        on_cycle: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
  """`runs` kill-and-rerun cycles, then the corruption cases; returns `summarize`'s counts.

  `overrides` (preset overrides) and `corpus_chars` (the corpus' first N
  characters; 0: all) make cycles cheaper; `on_cycle(summary)` sees the counts
  so far after every cycle.
  """
  from pipeline import configs
  rng = random.Random(seed)
  out = os.path.join(work, 'out')
  pipeline_root = configs.pipeline_root(out)
  with open(base_corpus, encoding='utf-8') as f:
    base_text = f.read()
  if corpus_chars:
    base_text = base_text[:corpus_chars]
  targets: List[str] = []
  cycles: List[Dict[str, Any]] = []
  corruption_results: List[Dict[str, Any]] = []
  for i in range(runs):
    if not targets:
      targets = list(phases)
      rng.shuffle(targets)
    phase = targets.pop()
    corpus = cycle_corpus(base_text, work, i)
    t0 = time.monotonic()
    kill = killed_run(out, corpus, pipeline_root, phase, os.path.join(work, f'run{i}-killed.log'),
                      rng, overrides, spans)
    after_kill = check_state(out)
    rerun = run_pipeline(out, corpus, os.path.join(work, f'run{i}-rerun.log'), overrides)
    recovered = check_recovered(out, rerun)
    if rerun['returncode'] == 0:
      # Kill within the phases as long as they last now (the machine's load varies).
      spans = dict(spans or {}, **{p: 0.9 * t for p, t in phase_seconds(out).items()})
    record = {'cycle': i, **kill, 'after_kill_ok': after_kill['ok'],
              'after_kill_problems': after_kill['problems'],
              'tmp_dirs_after_kill': after_kill['tmp_dirs'],
              'recovered': after_kill['ok'] and recovered['ok'],
              'problems': recovered['problems'], 'refused': recovered['refused'],
              'versions': recovered['state']['versions'],
              'seconds': round(time.monotonic() - t0, 1)}
    cycles.append(record)
    if verbose:
      print(f'cycle {i:2d}: target {phase:9s} killed in {record.get("phase", "-"):12s} '
            f'recovered={record["recovered"]} ({record["seconds"]} s)'
            + ('' if record['recovered'] else f' {record["after_kill_problems"]} '
               f'{record["problems"]}'), flush=True)
    if corruption and not corruption_results and rerun['returncode'] == 0:
      # On the first complete state, so that a long run stopped early has them too.
      for name in CORRUPTION_CASES:
        result = corruption_case(name, out, corpus, work, overrides)
        corruption_results.append(result)
        if verbose:
          print(f'corruption {name}: ok={result["ok"]} (exit {result["returncode"]}, '
                f'names file {result["names_file"]}, pushed {result["pushed"]})', flush=True)
    if on_cycle:
      on_cycle(summarize(cycles, corruption_results))
  return summarize(cycles, corruption_results)


def summarize(cycles: List[Dict[str, Any]], corruption: List[Dict[str, Any]]) -> Dict[str, Any]:
  phases: Dict[str, Dict[str, int]] = {}
  for c in cycles:
    key = c['phase'] if c['killed'] else 'finished before the kill'
    row = phases.setdefault(key, {'kills': 0, 'recovered': 0, 'failed': 0})
    row['kills'] += int(c['killed'])
    row['recovered' if c['recovered'] else 'failed'] += 1
  return {
      'runs': len(cycles),
      'kills': sum(int(c['killed']) for c in cycles),
      'recoveries': sum(int(c['recovered']) for c in cycles),
      'failures': sum(int(not c['recovered']) for c in cycles),
      'refused_by_gate_after_recovery': sum(int(bool(c['refused'])) for c in cycles),
      'temporary_push_dirs_left_by_kills': sum(c['tmp_dirs_after_kill'] for c in cycles),
      'by_phase': phases,
      'corruption': corruption,
      'corruption_ok': sum(int(c['ok']) for c in corruption),
      'cycles': cycles,
  }


def print_table(summary: Dict[str, Any]) -> None:
  rows = [{'phase': phase, **row} for phase, row in sorted(summary['by_phase'].items())]
  rows.append({'phase': 'all', 'kills': summary['kills'], 'recovered': summary['recoveries'],
               'failed': summary['failures']})
  print(common.table(rows, ['phase', 'kills', 'recovered', 'failed'],
                     ['killed during', 'kills', 'recovered', 'failed']))
  if summary['corruption']:
    print()
    print(common.table(summary['corruption'],
                       ['case', 'returncode', 'names_file', 'pushed', 'ok'],
                       ['corrupted input', 'exit', 'error names the file', 'pushed', 'ok']))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--runs', type=int, default=30, help='kill-and-rerun cycles')
  p.add_argument('--seed', type=int, default=0, help='phase order and kill delays')
  p.add_argument('--corpus', default=common.CORPUS_PATH)
  p.add_argument('--corpus-chars', type=int, default=0,
                 help='use the corpus\' first N characters (0: all)')
  p.add_argument('--overrides', default='',
                 help='preset overrides for every run, e.g. steps_per_epoch=10')
  p.add_argument('--no-corruption', dest='corruption', action='store_false',
                 help='skip the corrupted-input cases')
  p.add_argument('--work-dir', default=None, help='keep the runs here (default: a temp dir)')
  p.add_argument('--output', default=os.path.join(common.RESULTS_DIR, 'faults.json'))
  return p.parse_args(argv)


def main(argv=None) -> Dict[str, Any]:
  args = parse_args(argv)
  bench_run = common.Run('faults')
  work = args.work_dir or tempfile.mkdtemp(prefix='char-rnn-faults-')
  os.makedirs(work, exist_ok=True)
  settings = {'preset': 'tiny', 'overrides': args.overrides, 'corpus': args.corpus,
              'corpus_chars': args.corpus_chars or None, 'seed': args.seed, 'work_dir': work}

  def partial(summary):   # a stopped run still leaves its counts so far
    bench_run.write({**settings, 'complete': False, 'runs_asked': args.runs, **summary},
                    args.output)

  summary = run(args.runs, args.seed, work, args.corpus, args.corruption,
                overrides=args.overrides, corpus_chars=args.corpus_chars, on_cycle=partial)
  print_table(summary)
  path = bench_run.write({**settings, 'complete': True, 'runs_asked': args.runs, **summary},
                         args.output)
  print(f'wrote {path}')
  if not args.work_dir:
    shutil.rmtree(work, ignore_errors=True)
  return summary
