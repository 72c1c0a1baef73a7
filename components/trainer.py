"""CharRnnTrainer: TFX's Trainer with the Vocabulary as a real input channel.

Spec: TFX's TrainerSpec plus
  inputs  vocabulary: charrnn.Vocabulary   (its URI reaches run_fn as
          fn_args.custom_config['vocabulary_uri'], so ML Metadata records the
          lineage and no path is hard-coded; WindowGen's window counts arrive
          as num_windows_train / num_windows_eval)

The training code is `components/trainer_module.py`, referenced by import path
(`run_fn=...`) so that the installed package runs on a laptop and in the
Kubeflow image alike. Because TFX's cache key cannot see code behind an import
path, a hash of that code is added to custom_config: editing the model retrains.

Backups: every execution writes its step backups to
  <pipeline_root>/CharRnnTrainer/.backup/<key>/
beside the node's output directories, where <key> hashes the input artifacts
(Examples, Vocabulary and its fingerprint, the warm-start base model) and the
custom_config (settings and code fingerprint). A killed execution's successor
with the same inputs and settings computes the same key and resumes from there;
anything else starts afresh. run_fn deletes the directory after a successful run.
"""

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components import code_version
from components.artifacts import Corpus, Vocabulary


class CharRnnTrainerSpec(standard_component_specs.TrainerSpec):
  INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
            'vocabulary': ChannelParameter(type=Vocabulary),
            # Only its properties (sources, size, fingerprint) are read: they go into
            # the exported metrics.json, so the served model says what it learned from.
            'corpus': ChannelParameter(type=Corpus, optional=True)}


class Executor(trainer_executor.GenericExecutor):
  """GenericExecutor that hands run_fn the Vocabulary artifact's URI."""

  def _GetFnArgs(self, input_dict: Dict[str, List[types.Artifact]],
                 output_dict: Dict[str, List[types.Artifact]],
                 exec_properties: Dict[str, Any]):
    fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
    examples = artifact_utils.get_single_instance(input_dict['examples'])
    # WindowGen's window counts spare run_fn a counting pass over the records.
    counts = {f'num_windows_{split}': examples.get_int_custom_property(f'num_windows_{split}')
              for split in ('train', 'eval')
              if examples.has_custom_property(f'num_windows_{split}')}
    if input_dict.get('corpus'):
      counts['corpus'] = corpus_summary(artifact_utils.get_single_instance(input_dict['corpus']))
    fn_args.custom_config = dict(
        fn_args.custom_config or {}, **counts,
        vocabulary_uri=artifact_utils.get_single_uri(input_dict['vocabulary']),
        backup_dir=backup_dir(input_dict, output_dict, fn_args.custom_config or {}))
    return fn_args


BACKUP_DIR_NAME = '.backup'


def backup_key(input_dict: Dict[str, List[types.Artifact]],
               custom_config: Dict[str, Any]) -> str:
  """sha256 of what determines a training run: input artifacts and settings."""
  inputs = {}
  for name in ('examples', 'vocabulary', 'base_model'):
    inputs[name] = [
        {'uri': a.uri,
         'properties': {k: a.get_custom_property(k) for k in sorted(a.mlmd_artifact.custom_properties)
                        if k in ('fingerprint', 'served_version', 'served_from')}}
        for a in input_dict.get(name) or []]
  text = json.dumps({'inputs': inputs, 'custom_config': custom_config}, sort_keys=True,
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:32]


def backup_dir(input_dict: Dict[str, List[types.Artifact]],
               output_dict: Dict[str, List[types.Artifact]],
               custom_config: Dict[str, Any]) -> str:
  """<this node's directory>/.backup/<key>: found again by the next same execution."""
  model_run_uri = artifact_utils.get_single_uri(output_dict['model_run'])
  node_dir = os.path.dirname(os.path.dirname(model_run_uri.rstrip('/')))
  return os.path.join(node_dir, BACKUP_DIR_NAME, backup_key(input_dict, custom_config))


def corpus_summary(corpus: types.Artifact) -> Dict[str, Any]:
  """What metrics.json records of the training corpus (CorpusIngest's properties)."""
  sources = (corpus.get_string_custom_property('sources')
             if corpus.has_custom_property('sources') else '')
  return {'sources': [s for s in sources.split(',') if s],
          'num_chars': (corpus.get_int_custom_property('num_chars')
                        if corpus.has_custom_property('num_chars') else None),
          'fingerprint': (corpus.get_string_custom_property('fingerprint')
                          if corpus.has_custom_property('fingerprint') else None)}


def code_fingerprint(run_fn: str, *executor_modules: str) -> str:
  """The executor's and run_fn's code, with every project module they import
  (`executor_modules`: another executor that wraps this one, e.g. Vertex's)."""
  return code_version.fingerprint(__name__, run_fn.rpartition('.')[0], *executor_modules)


class CharRnnTrainer(base_component.BaseComponent):
  """Trains the char-RNN on WindowGen's Examples with a Vocabulary."""

  SPEC_CLASS = CharRnnTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, examples: types.BaseChannel, vocabulary: types.BaseChannel,
               run_fn: str, custom_config: Dict[str, Any],
               base_model: Optional[types.BaseChannel] = None,
               corpus: Optional[types.BaseChannel] = None):
    spec = CharRnnTrainerSpec(
        examples=examples,
        vocabulary=vocabulary,
        corpus=corpus,
        base_model=base_model,
        run_fn=run_fn,
        train_args=trainer_pb2.TrainArgs(splits=['train']),
        eval_args=trainer_pb2.EvalArgs(splits=['eval']),
        custom_config=json_utils.dumps(
            dict(custom_config, code_fingerprint=code_fingerprint(run_fn))),
        model=types.Channel(type=standard_artifacts.Model),
        model_run=types.Channel(type=standard_artifacts.ModelRun))
    super().__init__(spec=spec)
