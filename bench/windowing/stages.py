"""The data stages of the pipeline, run outside the orchestrator on their real executors.

CorpusIngest's `ingest()`, VocabularyGen's executor and WindowGen's Beam
executor, each into its own directory, so a benchmark can time (and measure
the memory of) each one alone. `bench.train` uses `prepare_windows` to get
exactly the TFRecords the Trainer reads.
"""

import os
from typing import List, Optional

from components import examples_format, vocabulary_gen, window_gen
from components.artifacts import Corpus, Vocabulary
from components.corpus_ingest import ingest


def _artifact(cls, uri: str):
  from tfx.types import standard_artifacts  # noqa: F401  (registers types)
  a = cls()
  a.uri = uri
  os.makedirs(uri, exist_ok=True)
  return a


def corpus_dir(workdir: str) -> str:
  return os.path.join(workdir, 'corpus')


def vocab_dir(workdir: str) -> str:
  return os.path.join(workdir, 'vocabulary')


def examples_dir(workdir: str) -> str:
  return os.path.join(workdir, 'examples')


def run_ingest(sources: List[str], workdir: str, seq_length: int = 100,
               eval_fraction: float = 0.1, shard_chars: int = 4_000_000,
               normalization: str = 'NFC') -> int:
  os.makedirs(corpus_dir(workdir), exist_ok=True)
  num_chars, _, _ = ingest(sources, corpus_dir(workdir), seq_length=seq_length,
                           eval_fraction=eval_fraction, shard_chars=shard_chars,
                           normalization=normalization)
  return num_chars


def run_vocabulary(workdir: str) -> int:
  vocabulary = _artifact(Vocabulary, vocab_dir(workdir))
  vocabulary_gen.Executor().Do({'corpus': [_artifact(Corpus, corpus_dir(workdir))]},
                               {'vocabulary': [vocabulary]}, {})
  if vocabulary.has_custom_property('vocab_size'):
    return vocabulary.get_int_custom_property('vocab_size')
  return vocabulary.vocab_size


def run_windows(workdir: str, seq_length: int = 100, stride: Optional[int] = None,
                eval_fraction: float = 0.1,
                beam_args: Optional[List[str]] = None) -> dict:
  from tfx.dsl.components.base import base_beam_executor
  from tfx.types import standard_artifacts
  examples = _artifact(standard_artifacts.Examples, examples_dir(workdir))
  executor = window_gen.Executor(base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=beam_args or ['--direct_running_mode=in_memory',
                                       '--direct_num_workers=1']))
  executor.Do({'corpus': [_artifact(Corpus, corpus_dir(workdir))],
               'vocabulary': [_artifact(Vocabulary, vocab_dir(workdir))]},
              {'examples': [examples]},
              {'seq_length': seq_length, 'stride': stride or seq_length,
               'eval_fraction': eval_fraction})
  return {split: examples.get_int_custom_property(f'num_windows_{split}')
          for split in examples_format.SPLITS}


def prepare_windows(sources: List[str], workdir: str, seq_length: int = 100,
                    stride: Optional[int] = None, eval_fraction: float = 0.1) -> dict:
  """Corpus -> vocabulary -> WindowGen TFRecords under `workdir`; returns window counts."""
  run_ingest(sources, workdir, seq_length, eval_fraction)
  run_vocabulary(workdir)
  return run_windows(workdir, seq_length, stride, eval_fraction)


def split_files(workdir: str, split: str) -> str:
  return os.path.join(examples_dir(workdir), f'Split-{split}', '*.gz')
