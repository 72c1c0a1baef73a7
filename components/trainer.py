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
"""

from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components import code_version
from components.artifacts import Vocabulary


class CharRnnTrainerSpec(standard_component_specs.TrainerSpec):
  INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
            'vocabulary': ChannelParameter(type=Vocabulary)}


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
    fn_args.custom_config = dict(
        fn_args.custom_config or {}, **counts,
        vocabulary_uri=artifact_utils.get_single_uri(input_dict['vocabulary']))
    return fn_args


def code_fingerprint(run_fn: str) -> str:
  """The executor's and run_fn's code, with every project module they import."""
  return code_version.fingerprint(__name__, run_fn.rpartition('.')[0])


class CharRnnTrainer(base_component.BaseComponent):
  """Trains the char-RNN on WindowGen's Examples with a Vocabulary."""

  SPEC_CLASS = CharRnnTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, examples: types.BaseChannel, vocabulary: types.BaseChannel,
               run_fn: str, custom_config: Dict[str, Any],
               base_model: Optional[types.BaseChannel] = None):
    spec = CharRnnTrainerSpec(
        examples=examples,
        vocabulary=vocabulary,
        base_model=base_model,
        run_fn=run_fn,
        train_args=trainer_pb2.TrainArgs(splits=['train']),
        eval_args=trainer_pb2.EvalArgs(splits=['eval']),
        custom_config=json_utils.dumps(
            dict(custom_config, code_fingerprint=code_fingerprint(run_fn))),
        model=types.Channel(type=standard_artifacts.Model),
        model_run=types.Channel(type=standard_artifacts.ModelRun))
    super().__init__(spec=spec)
