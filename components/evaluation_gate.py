"""EvaluationGate: bless a trained model only if it is good enough to serve.

Spec:
  inputs      model: Model (candidate), examples: Examples (its eval split),
              vocabulary: charrnn.Vocabulary (to turn eval ids back into text),
              baseline_model: Model, optional (what is served now, from ServedModel;
                              an empty placeholder when nothing is served)
  outputs     blessing: ModelBlessing
  parameters  max_eval_loss, regression_tolerance, max_eval_windows

It scores the exported SavedModel itself through its `score` signature (the
model that would be pushed, not the Keras object that trained it), so the
figure is eval loss in nats/char over the eval windows, exactly the training
loss. The candidate is blessed when its loss is at most `max_eval_loss` and at
most the baseline's loss + `regression_tolerance`. The blessing carries the
custom properties the standard Pusher (and TFX's LatestBlessedModelStrategy)
read (`blessed`, `current_model_id`, ...) and `evaluation.json` with the figures.
"""

import json
import math
import os
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from components import code_version
from components import served_model
from components.artifacts import Vocabulary
from components.text import CharVocab
from components import examples_format

EVALUATION_FILE = 'evaluation.json'
_BATCH = 256


class EvaluationGateSpec(ComponentSpec):
  PARAMETERS = {
      code_version.PARAMETER_NAME: code_version.PARAMETER,
      'max_eval_loss': ExecutionParameter(type=float),
      'regression_tolerance': ExecutionParameter(type=float),
      'max_eval_windows': ExecutionParameter(type=int),
  }
  INPUTS = {
      'model': ChannelParameter(type=standard_artifacts.Model),
      'examples': ChannelParameter(type=standard_artifacts.Examples),
      'vocabulary': ChannelParameter(type=Vocabulary),
      'baseline_model': ChannelParameter(type=standard_artifacts.Model, optional=True),
  }
  OUTPUTS = {'blessing': ChannelParameter(type=standard_artifacts.ModelBlessing)}


def eval_texts(examples_uri: str, vocab: CharVocab, max_windows: int = 0) -> List[str]:
  """The eval split's windows, decoded back to text."""
  ds = examples_format.record_dataset(examples_format.split_files(examples_uri, 'eval'))
  if max_windows:
    ds = ds.take(max_windows)
  texts = []
  for batch in ds.batch(1024):
    for ids in examples_format.parse_windows(batch).numpy():
      texts.append(vocab.decode(ids))
  return texts


def eval_loss(saved_model_dir: str, texts: List[str]) -> float:
  """Mean negative log-likelihood per scored character (nats), via `score`."""
  score = tf.saved_model.load(saved_model_dir).signatures['score']
  total, count = 0.0, 0
  for i in range(0, len(texts), _BATCH):
    out = score(text=tf.constant(texts[i:i + _BATCH]))
    total -= float(np.sum(out['log_likelihood'].numpy(), dtype=np.float64))
    count += int(np.sum(out['num_scored'].numpy()))
  if not count:
    raise ValueError('the eval split has no characters to score')
  return total / count


class Executor(base_executor.BaseExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    model = artifact_utils.get_single_instance(input_dict['model'])
    examples = artifact_utils.get_single_instance(input_dict['examples'])
    vocab = CharVocab.load(artifact_utils.get_single_uri(input_dict['vocabulary']))
    baselines = [b for b in input_dict.get('baseline_model') or []
                 if not served_model.is_empty(b)]
    baseline: Optional[types.Artifact] = baselines[0] if baselines else None
    blessing = artifact_utils.get_single_instance(output_dict['blessing'])

    texts = eval_texts(examples.uri, vocab, exec_properties['max_eval_windows'])
    loss = eval_loss(path_utils.serving_model_path(model.uri), texts)
    result: Dict[str, Any] = {
        'eval_loss': loss, 'bits_per_char': loss / math.log(2),
        'perplexity': math.exp(loss), 'eval_windows': len(texts),
        'max_eval_loss': exec_properties['max_eval_loss'],
        'regression_tolerance': exec_properties['regression_tolerance'],
    }
    reasons = []
    if loss > exec_properties['max_eval_loss']:
      reasons.append(f'eval loss {loss:.4f} > threshold {exec_properties["max_eval_loss"]}')
    blessing.set_string_custom_property('current_model', model.uri)
    blessing.set_int_custom_property('current_model_id', model.id)
    if baseline is not None:
      base_loss = eval_loss(path_utils.serving_model_path(baseline.uri), texts)
      result['baseline_eval_loss'] = base_loss
      result['baseline_model'] = baseline.uri
      blessing.set_string_custom_property('baseline_model', baseline.uri)
      blessing.set_int_custom_property('baseline_model_id', baseline.id)
      if loss > base_loss + exec_properties['regression_tolerance']:
        reasons.append(f'eval loss {loss:.4f} is worse than the blessed baseline\'s '
                       f'{base_loss:.4f} by more than {exec_properties["regression_tolerance"]}')
    blessed = not reasons
    result['blessed'] = blessed
    result['reasons'] = reasons
    io_utils.write_string_file(os.path.join(blessing.uri, EVALUATION_FILE),
                               json.dumps(result, indent=1))
    io_utils.write_string_file(
        os.path.join(blessing.uri, 'BLESSED' if blessed else 'NOT_BLESSED'), '')
    blessing.set_int_custom_property('blessed', int(blessed))
    blessing.set_float_custom_property('eval_loss', loss)
    blessing.set_float_custom_property('bits_per_char', result['bits_per_char'])
    logging.info('EvaluationGate: eval loss %.4f nats/char (%.4f bits/char): %s',
                 loss, result['bits_per_char'],
                 'BLESSED' if blessed else 'NOT BLESSED: ' + '; '.join(reasons))


class EvaluationGate(base_component.BaseComponent):
  """Blesses a candidate Model on eval loss, against a threshold and a baseline."""

  SPEC_CLASS = EvaluationGateSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
               vocabulary: types.BaseChannel, max_eval_loss: float,
               regression_tolerance: float, max_eval_windows: int = 0,
               baseline_model: Optional[types.BaseChannel] = None):
    super().__init__(spec=EvaluationGateSpec(
        code_version=code_version.fingerprint(__name__),
        model=model, examples=examples, vocabulary=vocabulary,
        baseline_model=baseline_model, max_eval_loss=max_eval_loss,
        regression_tolerance=regression_tolerance,
        max_eval_windows=max_eval_windows,
        blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
