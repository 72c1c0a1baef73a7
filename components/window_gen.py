"""WindowGen: an Apache Beam pipeline that cuts the corpus into training windows.

Spec:
  inputs      corpus: charrnn.Corpus, vocabulary: charrnn.Vocabulary
  outputs     examples: Examples (Split-train/*.gz, Split-eval/*.gz)
  parameters  seq_length, stride, eval_fraction

Each record is a `tf.train.Example` with one int64 feature `ids` holding
seq_length + 1 ids: the model reads the first seq_length and predicts the last
seq_length, as in the tutorial. The first (1 - eval_fraction) of the corpus'
characters train and the rest evaluate (nanoGPT's split for tiny Shakespeare);
no window crosses the boundary.

It streams: one Beam element per (corpus shard, split), each reading its shard
plus the few characters its last window needs from the next one, and writing
its own TFRecord file. No worker ever holds more than a shard, so memory stays
flat however large the corpus, and the pipeline runs unchanged on Dataflow,
Flink or Spark through the pipeline's `beam_pipeline_args`.
"""

import os
import uuid
from typing import Any, Dict, List, NamedTuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import code_version
from components import examples_format as fmt
from components import text as text_lib
from components.artifacts import Corpus, Vocabulary


class WindowGenSpec(ComponentSpec):
  PARAMETERS = {
      code_version.PARAMETER_NAME: code_version.PARAMETER,
      'seq_length': ExecutionParameter(type=int),
      'stride': ExecutionParameter(type=int),
      'eval_fraction': ExecutionParameter(type=float),
  }
  INPUTS = {
      'corpus': ChannelParameter(type=Corpus),
      'vocabulary': ChannelParameter(type=Vocabulary),
  }
  OUTPUTS = {'examples': ChannelParameter(type=standard_artifacts.Examples)}


class _Task(NamedTuple):
  split: str
  shard: int
  region_start: int
  region_end: int


def _write_task(task: _Task, corpus_uri: str, vocab_uri: str, output_uri: str,
                window: int, stride: int) -> Dict[str, Any]:
  """Writes the windows of one (split, shard) to its own TFRecord file."""
  index = text_lib.read_corpus_index(corpus_uri)
  shards = index['shards']
  offsets = np.cumsum([0] + [s['num_chars'] for s in shards])
  lo, hi = int(offsets[task.shard]), int(offsets[task.shard + 1])
  starts = fmt.window_starts(task.region_start, task.region_end, window, stride, lo, hi)
  name = fmt.shard_file_name(task.shard, len(shards))
  path = os.path.join(fmt.split_dir(output_uri, task.split), name)
  vocab = text_lib.CharVocab.load(vocab_uri)
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.TFRecordWriter(tmp, options=fmt.writer_options()) as writer:
    if len(starts):
      # This shard plus just the characters the last window needs from the next ones.
      needed_end = starts[-1] + window
      pieces, end, i = [], lo, task.shard
      while end < needed_end:
        text = text_lib.read_shard(corpus_uri, shards[i])
        pieces.append(vocab.encode(text if i == task.shard else text[:needed_end - end]))
        end += shards[i]['num_chars']
        i += 1
      ids = np.concatenate(pieces)
      prefix = fmt.example_prefix(window, len(vocab))
      if prefix is None:
        serialize = fmt.serialize_fn(window, len(vocab))
        for start in starts:
          writer.write(serialize(ids[start - lo:start - lo + window]))
      else:
        data = ids.astype(np.uint8).tobytes()   # one conversion, then byte slices
        for start in starts:
          writer.write(prefix + data[start - lo:start - lo + window])
  tf.io.gfile.rename(tmp, path, overwrite=True)   # retried bundles never leave halves
  return {'split': task.split, 'file': name, 'windows': len(starts)}


# ----------------------------------------------------------------- executor
class Executor(base_beam_executor.BaseBeamExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    corpus = artifact_utils.get_single_instance(input_dict['corpus'])
    vocabulary = artifact_utils.get_single_instance(input_dict['vocabulary'])
    examples = artifact_utils.get_single_instance(output_dict['examples'])
    seq_length = exec_properties['seq_length']
    stride = exec_properties['stride']
    if seq_length < 1 or stride < 1:
      raise ValueError(f'seq_length ({seq_length}) and stride ({stride}) must be >= 1')
    window = seq_length + 1

    index = text_lib.read_corpus_index(corpus.uri)
    num_chars = index['num_chars']
    boundary = fmt.split_boundary(num_chars, exec_properties['eval_fraction'])
    regions = {'train': (0, boundary), 'eval': (boundary, num_chars)}
    for split, (start, end) in regions.items():
      count = fmt.count_windows(start, end, window, stride)
      if count == 0:
        raise ValueError(
            f'the {split} split ({end - start} characters) is shorter than one '
            f'window of seq_length + 1 = {window} characters')
      examples.set_int_custom_property(f'num_windows_{split}', count)
      tf.io.gfile.makedirs(fmt.split_dir(examples.uri, split))

    offsets = np.cumsum([0] + [s['num_chars'] for s in index['shards']])
    tasks = [
        _Task(split, i, *regions[split])
        for split in fmt.SPLITS for i in range(len(index['shards']))
        if offsets[i] < regions[split][1] and offsets[i + 1] > regions[split][0]
    ]
    with self._make_beam_pipeline() as p:
      _ = (p
           | 'Tasks' >> beam.Create(tasks)
           | 'Distribute' >> beam.Reshuffle()
           | 'WriteWindows' >> beam.Map(
               _write_task, corpus_uri=corpus.uri, vocab_uri=vocabulary.uri,
               output_uri=examples.uri, window=window, stride=stride))

    examples.split_names = artifact_utils.encode_split_names(list(fmt.SPLITS))
    examples_utils.set_payload_format(
        examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples.set_int_custom_property('seq_length', seq_length)
    examples.set_int_custom_property('stride', stride)


class WindowGen(base_beam_component.BaseBeamComponent):
  """Windows a Corpus into tf.train.Example TFRecords with train/eval splits."""

  SPEC_CLASS = WindowGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, corpus: types.BaseChannel, vocabulary: types.BaseChannel,
               seq_length: int, stride: int, eval_fraction: float):
    super().__init__(spec=WindowGenSpec(
        code_version=code_version.fingerprint(__name__),
        corpus=corpus, vocabulary=vocabulary, seq_length=seq_length,
        stride=stride, eval_fraction=eval_fraction,
        examples=types.Channel(type=standard_artifacts.Examples)))
