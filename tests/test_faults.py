"""bench.faults in small: the real pipeline SIGKILLed mid-run, re-run, and checked.

With CHAR_RNN_SLOW_TESTS=1: one cycle killed during training (the longest
phase, so the kill lands there on a loaded machine too), on a 150 KB slice of
the corpus and 8 training steps; one cycle per phase (ingest, windowing,
training, gate, push) and the corrupted-input cases. (The default suite covers
the same faults piece by piece: tests/test_pusher.py, test_training_faults.py,
test_text.py, test_window_gen.py.) `python -m bench.faults --runs 30` is the
figure (bench/results/faults.json).
"""

import os

import pytest

from bench.faults import bench as faults

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')
QUICK = 'steps_per_epoch=8,eval_steps=2'


@pytest.fixture
def small_corpus(tmp_path, corpus_path):
  path = tmp_path / 'small.txt'
  with open(corpus_path, encoding='utf-8') as f:
    path.write_text(f.read()[:150_000], encoding='utf-8')
  return str(path)


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: two tiny pipeline runs in '
                                     'subprocesses, one SIGKILLed (~1 min on 2 cores)')
def test_a_run_killed_in_training_leaves_a_working_state_and_the_rerun_pushes(
    tmp_path, small_corpus):
  summary = faults.run(runs=1, seed=1, work=str(tmp_path), base_corpus=small_corpus,
                       corruption=False, phases=('training',), verbose=False,
                       overrides=QUICK, spans={'training': 1.0})
  [cycle] = summary['cycles']
  assert cycle['killed'], cycle
  assert cycle['after_kill_ok'], cycle['after_kill_problems']
  assert cycle['recovered'], cycle['problems']
  assert summary['failures'] == 0 and summary['recoveries'] == 1
  # The re-run finished the work: one pushed version, no temporary directory left.
  state = faults.check_state(os.path.join(str(tmp_path), 'out'))
  assert state['versions'] == 1 and state['tmp_dirs'] == 0 and state['ok']


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: a kill-and-rerun cycle per '
                                     'phase and three corrupted inputs (~8 min on 2 cores)')
def test_kills_in_every_phase_and_corrupted_inputs(tmp_path, small_corpus):
  summary = faults.run(runs=len(faults.PHASES), seed=2, work=str(tmp_path),
                       base_corpus=small_corpus, corruption=True, verbose=False, overrides=QUICK)
  failed = [c for c in summary['cycles'] if not c['recovered']]
  assert not failed, failed
  by_case = {c['case']: c for c in summary['corruption']}
  # CorpusIngest names a source that is not UTF-8 and pushes nothing.
  assert by_case['source-not-utf8']['ok'], by_case['source-not-utf8']
  # A truncated TFRecord shard stops the run (the Trainer reads both splits
  # before the gate, which checks every eval record too): nothing is pushed.
  for case in ('train-shard-truncated', 'eval-shard-truncated'):
    outcome = by_case[case]
    assert outcome['returncode'] != 0 and not outcome['pushed'] and outcome['state_ok'], outcome
    assert 'CharRnnTrainer' in outcome['read_by'], outcome
  # A truncated TFRecord or corpus shard is an error naming the file (the
  # Trainer counts every record of both splits up front; text.read_shard checks
  # each shard against the corpus index), with nothing pushed.
  for case in ('train-shard-truncated', 'eval-shard-truncated', 'corpus-shard-truncated'):
    assert by_case[case]['ok'], by_case[case]
