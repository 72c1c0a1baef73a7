"""VocabularyGen: the corpus' distinct characters as a typed Vocabulary.

Spec:
  inputs   corpus: charrnn.Corpus
  outputs  vocabulary: charrnn.Vocabulary   (vocabulary.json; id 0 = [UNK])

The ids equal the tutorial's `StringLookup(vocabulary=sorted(set(text)),
mask_token=None)`. The corpus is read shard by shard, so memory is bounded by
the shard size, not the corpus size.
"""

from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec

from components import code_version
from components import text as text_lib
from components.artifacts import Corpus, Vocabulary


class VocabularyGenSpec(ComponentSpec):
  PARAMETERS = {code_version.PARAMETER_NAME: code_version.PARAMETER}
  INPUTS = {'corpus': ChannelParameter(type=Corpus)}
  OUTPUTS = {'vocabulary': ChannelParameter(type=Vocabulary)}


class Executor(base_executor.BaseExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    corpus = artifact_utils.get_single_instance(input_dict['corpus'])
    vocabulary = artifact_utils.get_single_instance(output_dict['vocabulary'])
    chars = set()
    for shard in text_lib.iter_corpus_shards(corpus.uri):
      chars.update(shard)
    vocab = text_lib.CharVocab.from_chars(chars)
    vocab.save(vocabulary.uri)
    vocabulary.set_int_custom_property('vocab_size', len(vocab))
    vocabulary.set_string_custom_property('fingerprint', vocab.fingerprint)


class VocabularyGen(base_component.BaseComponent):
  """Builds the character vocabulary of a Corpus."""

  SPEC_CLASS = VocabularyGenSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, corpus: types.BaseChannel):
    super().__init__(spec=VocabularyGenSpec(
        code_version=code_version.fingerprint(__name__),
        corpus=corpus, vocabulary=types.Channel(type=Vocabulary)))
