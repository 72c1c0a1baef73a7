"""The Beam components on Beam's Dask runner, on a real dask.distributed cluster on loopback.

A scheduler and 2 worker processes on 127.0.0.1 (pipeline/dask_cluster.py),
started once for the module and stopped after it. CorpusIngest and WindowGen
run once on the DirectRunner and once on the cluster,
selected only by beam_pipeline_args (`--runner=components.dask_runner.DaskRunner
--dask_client_address=...`), and every output file must be byte-identical; the
cluster's task stream shows the work ran on both worker processes. The Dask
side runs as a LocalDagRunner pipeline (CorpusIngest -> VocabularyGen ->
WindowGen) whose only Beam args name the cluster.

With CHAR_RNN_SLOW_TESTS=1 the whole tiny pipeline (train, gate, push) runs
through `python -m pipeline.dask_cluster -- python -m pipeline.local_runner`,
what `make pipeline BEAM=dask` runs.
"""

import glob
import hashlib
import os
import subprocess
import sys
import unicodedata

import pytest
from tfx import v1 as tfx
from tfx.dsl.components.base import base_beam_component, base_beam_executor
from tfx.types import standard_artifacts

from components import corpus_ingest, dask_runner, vocabulary_gen, window_gen
from components.artifacts import Corpus, Vocabulary
from pipeline.dask_cluster import loopback_cluster
from tests.conftest import REPO_DIR

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')
# --setup_file: the project's package for runners that stage code; it also spares
# TFX building an sdist of itself for every Beam executor (seconds each).
DIRECT = ['--direct_running_mode=in_memory', '--direct_num_workers=1',
          f'--setup_file={os.path.join(REPO_DIR, "setup.py")}']
SEQ, STRIDE, EVAL, SHARD = 20, 13, 0.1, 4000
# Starters that compose (Hangul jamo, an Oriya vowel sign), combining marks,
# CRLF, 4-byte UTF-8: byte ranges of the big file cut through all of them.
TRICKY = 'x\u1100\u1161\u11a8 \u0b47\u0b3e e\u0301\u0323 \u00e9\r\n\U0001F600\u4e2d. '
LINE = 'To be, or not to be, that is the question:\n'


@pytest.fixture(scope='module')
def cluster():
  with loopback_cluster(workers=2) as address:
    yield address


@pytest.fixture(scope='module')
def corpus_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('sources')
  (d / 'a.txt').write_text(LINE * 40, encoding='utf-8')
  (d / 'b.txt').write_bytes(b'\xef\xbb\xbf' + (TRICKY * 30).encode('utf-8'))
  (d / 'c.txt').write_bytes(((LINE + TRICKY) * 400).encode('utf-8'))   # ~40 KB: ~10 ranges
  return [str(d / '*.txt')], d


def _artifact(cls, uri):
  a = cls()
  a.uri = str(uri)
  a.id = 1
  return a


def _files(directory):
  out = {}
  for path in sorted(glob.glob(os.path.join(str(directory), '**', '*'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, str(directory))] = f.read()
  return out


def _context(args):
  return base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(args))


def _ingest(args, sources, out):
  out.mkdir()
  corpus = _artifact(Corpus, out)
  corpus_ingest.Executor(_context(args)).Do(
      {}, {'corpus': [corpus]},
      {'sources': __import__('json').dumps(sources), 'seq_length': SEQ, 'eval_fraction': EVAL,
       'shard_chars': SHARD, 'unicode_normalization': 'NFC'})
  return corpus


def _windows(args, corpus_dir, vocab_dir, out):
  out.mkdir()
  examples = _artifact(standard_artifacts.Examples, out)
  window_gen.Executor(_context(args)).Do(
      {'corpus': [_artifact(Corpus, corpus_dir)], 'vocabulary': [_artifact(Vocabulary, vocab_dir)]},
      {'examples': [examples]},
      {'seq_length': SEQ, 'stride': STRIDE, 'eval_fraction': EVAL})
  return examples


def _workers_that_ran(address, fn):
  """Runs fn() and returns the set of workers the scheduler saw run tasks meanwhile."""
  from distributed import Client, get_task_stream  # pylint: disable=g-import-not-at-top
  with Client(address) as client, get_task_stream(client) as stream:
    fn()
  return {t['worker'] for t in stream.data}


def test_errors_raised_on_dask_workers_reach_the_caller_and_publish_nothing(
    cluster, tmp_path):
  bad = tmp_path / 'bad.txt'
  bad.write_bytes(b'A' * 5000 + b'\xff')
  with pytest.raises(corpus_ingest.CorpusError, match=r'bad\.txt: invalid UTF-8 at byte offset 5000'):
    _ingest(DIRECT + dask_runner.beam_args(cluster), [str(bad)], tmp_path / 'out')
  assert os.listdir(tmp_path / 'out') == []


def test_the_dask_runner_needs_an_address():
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='dask_client_address'):
    with beam.Pipeline(argv=[f'--runner={dask_runner.RUNNER}']) as p:
      _ = p | beam.Create([1])


def test_corpus_ingest_and_window_gen_on_dask_are_byte_identical_to_direct(
    cluster, corpus_files, tmp_path, monkeypatch):
  """CorpusIngest -> VocabularyGen -> WindowGen under LocalDagRunner with the Dask args only,
  against the executors on the DirectRunner: every output file byte for byte."""
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  sources, src_dir = corpus_files
  monkeypatch.setattr(corpus_ingest, '_RANGE_BYTES', 4096)   # the big file becomes ~10 ranges
  ingest = corpus_ingest.CorpusIngest(sources=sources, seq_length=SEQ, eval_fraction=EVAL,
                                      shard_chars=SHARD)
  vocab = vocabulary_gen.VocabularyGen(corpus=ingest.outputs['corpus'])
  windows = window_gen.WindowGen(corpus=ingest.outputs['corpus'],
                                 vocabulary=vocab.outputs['vocabulary'],
                                 seq_length=SEQ, stride=STRIDE, eval_fraction=EVAL)
  # Both are Beam components: the pipeline's Beam args (the Dask runner) reach them.
  assert all(isinstance(c, base_beam_component.BaseBeamComponent) for c in (ingest, windows))
  db = tfx.orchestration.metadata.sqlite_metadata_connection_config(str(tmp_path / 'm.db'))
  pipeline = tfx.dsl.Pipeline(
      pipeline_name='dask-data', pipeline_root=str(tmp_path / 'root'),
      components=[ingest, vocab, windows], metadata_connection_config=db,
      beam_pipeline_args=DIRECT[2:] + dask_runner.beam_args(cluster))
  workers = _workers_that_ran(cluster, lambda: tfx.orchestration.LocalDagRunner().run(pipeline))
  assert len(workers) >= 2, workers          # the work really spread over both processes
  store = metadata_store.MetadataStore(db)
  [corpus] = store.get_artifacts_by_type('charrnn.Corpus')
  [examples] = store.get_artifacts_by_type('Examples')

  direct = _ingest(DIRECT, sources, tmp_path / 'direct')
  dask_corpus = _files(corpus.uri)
  assert dask_corpus == _files(tmp_path / 'direct')
  assert len(dask_corpus) > 3                # several shards and index.json
  expected = ''.join(open(os.path.join(src_dir, n), encoding='utf-8-sig').read()
                     for n in ('a.txt', 'b.txt', 'c.txt'))
  expected = unicodedata.normalize('NFC', expected.replace('\r\n', '\n'))
  assert direct.get_string_custom_property('fingerprint') == \
      hashlib.sha256(expected.encode()).hexdigest()
  assert direct.get_int_custom_property('num_chars') == len(expected)

  vocab_dir = tmp_path / 'vocab'
  vocab_dir.mkdir()
  vocabulary_gen.Executor().Do({'corpus': [direct]},
                               {'vocabulary': [_artifact(Vocabulary, vocab_dir)]}, {})
  _windows(DIRECT, tmp_path / 'direct', vocab_dir, tmp_path / 'ex-direct')
  dask_examples = _files(examples.uri)
  assert dask_examples == _files(tmp_path / 'ex-direct')
  assert {os.path.dirname(f) for f in dask_examples} == {'Split-train', 'Split-eval'}


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: the whole tiny pipeline '
                    'with its own cluster (~2-4 min)')
def test_make_pipeline_beam_dask_trains_gates_and_pushes(tmp_path, corpus_path):
  env = dict(os.environ, CHAR_RNN_OUTPUT_DIR=str(tmp_path), CHAR_RNN_PRESET='tiny',
             CHAR_RNN_CORPUS=corpus_path)
  env.pop('CHAR_RNN_BEAM_ARGS', None)
  result = subprocess.run(
      [sys.executable, '-m', 'pipeline.dask_cluster', '--workers=2', '--',
       sys.executable, '-m', 'pipeline.local_runner'],
      cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=1200, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'dask_cluster: scheduler tcp://127.0.0.1:' in result.stdout
  assert 'components.dask_runner.DaskRunner' in result.stderr   # the Beam steps' args
  versions = os.listdir(os.path.join(tmp_path, 'serving_model', 'char_rnn'))
  assert [v for v in versions if v.isdigit()], versions
