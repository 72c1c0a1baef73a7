"""A real multi-worker cluster on loopback: N processes running run_fn, each with its TF_CONFIG.

Used by tests/test_multiworker.py and bench/train/workers.py. What a Vertex AI
CustomJob or a TFJob does on N machines, done on 127.0.0.1: every process gets
the same FnArgs (the same artifact directories, as every replica of a job does)
and its own TF_CONFIG; the processes find each other over gRPC on free ports.

`make_examples` builds the Trainer's real inputs from a text: CorpusIngest's
layout (components.corpus_ingest.ingest), a Vocabulary, and WindowGen's
TFRecords (its executor on the in-memory DirectRunner).
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of the cluster: run_fn with the FnArgs in argv[1] (JSON).
RUN_FN = '''
import json, sys
from absl import logging
logging.set_verbosity(logging.INFO)
from tfx.components.trainer.fn_args_utils import FnArgs
from components import trainer_module
a = json.loads(sys.argv[1])
trainer_module.run_fn(FnArgs(train_files=[a["train"]], eval_files=[a["eval"]],
                             serving_model_dir=a["serving"], model_run_dir=a["run"],
                             custom_config=a["config"], base_model=a.get("base_model")))
'''


def kill_at_backup(procs: List[subprocess.Popen], backup_dir: str, min_step: int,
                   timeout: float = 300) -> Optional[int]:
  """SIGKILLs every process in `procs` as soon as a complete step backup at step >=
  `min_step` is in `backup_dir` (training.BackupStore's layout); returns that step.

  None when a process ended first or no such backup appeared within `timeout`
  (everything still running is killed then too).
  """
  deadline = time.monotonic() + timeout
  try:
    while time.monotonic() < deadline:
      for path in glob.glob(os.path.join(backup_dir, 'step-*', 'state.json')):
        name = os.path.basename(os.path.dirname(path))
        if '.tmp-' in name:
          continue                  # still being written (renamed into place when complete)
        step = int(name.split('-')[1])
        if step >= min_step:
          return step
      if any(proc.poll() is not None for proc in procs):
        return None
      time.sleep(0.02)
    return None
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
      proc.wait()


def free_ports(n: int) -> List[int]:
  """n distinct free loopback ports (held open together while choosing)."""
  sockets = []
  try:
    for _ in range(n):
      s = socket.socket()
      s.bind(('127.0.0.1', 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_config(ports: List[int], index: int, chief: bool = False) -> str:
  """TF_CONFIG of task `index`: with `chief`, task 0 is 'chief' and the rest 'worker'
  (Vertex AI's layout); without, all are workers (a TFJob of workers only)."""
  addresses = [f'127.0.0.1:{p}' for p in ports]
  if chief:
    cluster = {'chief': addresses[:1], 'worker': addresses[1:]}
    task = {'type': 'chief', 'index': 0} if index == 0 else {'type': 'worker',
                                                              'index': index - 1}
  else:
    cluster = {'worker': addresses}
    task = {'type': 'worker', 'index': index}
  return json.dumps({'cluster': cluster, 'task': task})


def make_examples(workdir: str, text: str, preset: Any) -> Dict[str, Any]:
  """Corpus, Vocabulary and WindowGen's Examples for `text` under `workdir`.

  Returns the run_fn arguments (without directories): split patterns, the
  vocabulary's URI and WindowGen's window counts.
  """
  from tfx.dsl.components.base import base_beam_executor  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  from components import examples_format, window_gen  # pylint: disable=g-import-not-at-top
  from components.artifacts import Corpus, Vocabulary  # pylint: disable=g-import-not-at-top
  from components.corpus_ingest import ingest  # pylint: disable=g-import-not-at-top
  from components.text import CharVocab  # pylint: disable=g-import-not-at-top

  src = os.path.join(workdir, 'src.txt')
  with open(src, 'w', encoding='utf-8') as f:
    f.write(text)
  dirs = {n: os.path.join(workdir, n) for n in ('corpus', 'vocabulary', 'examples')}
  for d in dirs.values():
    os.makedirs(d)
  ingest([src], dirs['corpus'], seq_length=preset.seq_length,
         eval_fraction=preset.eval_fraction, shard_chars=preset.shard_chars, normalization='')
  CharVocab.from_text(text).save(dirs['vocabulary'])

  def artifact(cls, uri):
    a = cls()
    a.uri = uri
    return a

  examples = artifact(standard_artifacts.Examples, dirs['examples'])
  window_gen.Executor(base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=['--direct_running_mode=in_memory'])).Do(
          {'corpus': [artifact(Corpus, dirs['corpus'])],
           'vocabulary': [artifact(Vocabulary, dirs['vocabulary'])]},
          {'examples': [examples]},
          {'seq_length': preset.seq_length, 'stride': preset.window_stride,
           'eval_fraction': preset.eval_fraction})
  return {'train': examples_format.split_pattern(dirs['examples'], 'train'),
          'eval': examples_format.split_pattern(dirs['examples'], 'eval'),
          'vocabulary_uri': dirs['vocabulary'],
          'num_windows_train': examples.get_int_custom_property('num_windows_train'),
          'num_windows_eval': examples.get_int_custom_property('num_windows_eval')}


def run_fn_args(inputs: Dict[str, Any], workdir: str, training_config: Dict[str, Any],
                base_model: Optional[str] = None) -> Dict[str, Any]:
  """The JSON argument of RUN_FN: the same for every process of one cluster."""
  config = dict(training_config, vocabulary_uri=inputs['vocabulary_uri'],
                num_windows_train=inputs['num_windows_train'],
                num_windows_eval=inputs['num_windows_eval'])
  return {'train': inputs['train'], 'eval': inputs['eval'],
          'serving': os.path.join(workdir, 'model', 'Format-Serving'),
          'run': os.path.join(workdir, 'model_run'), 'config': config,
          'base_model': base_model}


class Cluster:
  """N run_fn processes on loopback; each one's output goes to <log_dir>/task-<i>.log."""

  def __init__(self, args: Dict[str, Any], num_workers: int, log_dir: str,
               chief: bool = False, env: Optional[Dict[str, str]] = None,
               commands: Optional[List[List[str]]] = None):
    """`commands`: each task's command line instead of RUN_FN with `args`."""
    self.logs = [os.path.join(log_dir, f'task-{i}.log') for i in range(num_workers)]
    self.tmpdirs = [os.path.join(log_dir, f'tmp-{i}') for i in range(num_workers)]
    ports = free_ports(num_workers) if num_workers > 1 else []
    self.procs: List[subprocess.Popen] = []
    for i in range(num_workers):
      os.makedirs(self.tmpdirs[i], exist_ok=True)
      task_env = dict(os.environ, PYTHONWARNINGS='ignore', TF_CPP_MIN_LOG_LEVEL='2',
                      TMPDIR=self.tmpdirs[i], **(env or {}))
      task_env.pop('TF_CONFIG', None)
      if num_workers > 1:
        task_env['TF_CONFIG'] = tf_config(ports, i, chief)
      with open(self.logs[i], 'w') as log:
        command = (commands[i] if commands else
                   [sys.executable, '-c', RUN_FN, json.dumps(args)])
        self.procs.append(subprocess.Popen(command, cwd=REPO_DIR, env=task_env,
                                           stdout=log, stderr=subprocess.STDOUT))

  def tail(self, i: int, chars: int = 3000) -> str:
    with open(self.logs[i], errors='replace') as f:
      return f.read()[-chars:]

  def wait(self, timeout: float) -> List[int]:
    """Exit codes of all processes; kills every one still running at `timeout`."""
    deadline = time.monotonic() + timeout
    codes = []
    try:
      for proc in self.procs:
        codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.1)))
    except subprocess.TimeoutExpired:
      self.kill()
      raise
    return codes

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
