"""EvaluationGate: bless a trained model only if it is good enough to serve.

Spec:
  inputs      model: Model (candidate), examples: Examples (its eval split),
              vocabulary: charrnn.Vocabulary (to turn eval ids back into text),
              baseline_model: Model, optional (what is served now, from ServedModel;
                              an empty placeholder when nothing is served)
  outputs     blessing: ModelBlessing
  parameters  max_eval_loss_ratio, max_eval_loss (optional), regression_tolerance,
              max_eval_windows

It scores the exported SavedModel itself through its `score` signature (the
model that would be pushed, not the Keras object that trained it), so the
figure is eval loss in nats/char over the eval windows, exactly the training
loss. The candidate is blessed when its loss is

* finite: a diverged model (NaN or infinite loss) is refused by name. Every
  comparison with NaN is false, so without this check it would pass every
  threshold, be pushed, and become a baseline every later model "beats";
* at most `max_eval_loss_ratio` x the unigram entropy of the eval text (nats/char
  of the characters the loss scores, from the same windows). An absolute
  threshold means different things for different corpora: 4.2 nats is a poor
  model of Shakespeare's 66 characters (entropy 3.34) and an impossible target
  for a corpus of 6,000 Chinese characters (entropy near 8.7). The ratio is
  the same bar for both: below 1 the model knows more than character
  frequencies;
* at most `max_eval_loss`, when that absolute cap is set (None or 0: off);
* at most the baseline's loss + `regression_tolerance`. A baseline whose loss
  is not finite, or that cannot be loaded, counts as no baseline (logged).

The blessing carries the custom properties the standard Pusher (and TFX's
LatestBlessedModelStrategy) read (`blessed`, `current_model_id`, ...) and
`evaluation.json` with the figures, the entropy, the ratio, both thresholds and
the reasons for a refusal.
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
      'max_eval_loss': ExecutionParameter(type=float, optional=True),
      'max_eval_loss_ratio': ExecutionParameter(type=float, optional=True),
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


def eval_texts(examples_uri: str, vocab: CharVocab, max_windows: int = 0,
               expected_windows: Optional[int] = None) -> List[str]:
  """The eval split's windows, decoded back to text.

  A file that does not read to its end (truncated, corrupted) is an error naming
  it; so is a split holding another number of windows than WindowGen wrote
  (`expected_windows`, when known and every window is read): the gate never
  judges a model on part of the eval text.
  """
  texts: List[str] = []
  files = examples_format.split_files(examples_uri, 'eval')
  for path in files:
    for ids in examples_format.read_windows(path, max_windows and max_windows - len(texts)):
      texts.extend(vocab.decode(row) for row in ids)
    if max_windows and len(texts) >= max_windows:
      break
  if not max_windows:
    examples_format.check_total(files, len(texts), expected_windows)
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


def unigram_entropy(texts: List[str]) -> float:
  """Entropy (nats/char) of the characters the loss scores: each window but its first.

  The loss of a model that knows only character frequencies; with stride ==
  seq_length the scored characters tile the eval region exactly.
  """
  counts: Dict[str, int] = {}
  for text in texts:
    for ch in text[1:]:
      counts[ch] = counts.get(ch, 0) + 1
  n = sum(counts.values())
  if not n:
    raise ValueError('the eval split has no characters to score')
  p = np.array(list(counts.values()), dtype=np.float64) / n
  return float(-np.sum(p * np.log(p)))


def _finite_or_none(x: Optional[float]) -> Optional[float]:
  """JSON has no NaN or Infinity: a non-finite figure is written as null."""
  return x if x is not None and math.isfinite(x) else None


def _describe(loss: float) -> str:
  return 'NaN' if math.isnan(loss) else ('infinite' if math.isinf(loss) else f'{loss:.4f}')


def _baseline_loss(baseline: types.Artifact, texts: List[str]) -> Optional[float]:
  """The served model's loss, or None (logged) when it is not a usable baseline."""
  path = path_utils.serving_model_path(baseline.uri)
  try:
    loss = eval_loss(path, texts)
  except Exception as e:  # pylint: disable=broad-except  (unreadable: any load/score error)
    logging.warning('EvaluationGate: baseline %s cannot be scored (%s: %s); judging '
                    'as if nothing were served', path, type(e).__name__, str(e)[:300])
    return None
  if not math.isfinite(loss):
    logging.warning('EvaluationGate: baseline %s has a %s eval loss; judging as if '
                    'nothing were served', path, _describe(loss))
    return None
  return loss


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

    expected = (examples.get_int_custom_property('num_windows_eval')
                if examples.has_custom_property('num_windows_eval') else None)
    texts = eval_texts(examples.uri, vocab, exec_properties['max_eval_windows'], expected)
    loss = eval_loss(path_utils.serving_model_path(model.uri), texts)
    entropy = unigram_entropy(texts)
    ratio = exec_properties.get('max_eval_loss_ratio') or None
    cap = exec_properties.get('max_eval_loss') or None
    finite = math.isfinite(loss)
    result: Dict[str, Any] = {
        'eval_loss': _finite_or_none(loss), 'eval_loss_finite': finite,
        'bits_per_char': _finite_or_none(loss / math.log(2)),
        'perplexity': _finite_or_none(math.exp(min(loss, 700.0))) if finite else None,
        'eval_windows': len(texts),
        'unigram_entropy': entropy,
        'eval_loss_over_entropy': _finite_or_none(loss / entropy) if entropy else None,
        'max_eval_loss_ratio': ratio,
        'ratio_threshold': ratio * entropy if ratio else None,
        'max_eval_loss': cap,
        'regression_tolerance': exec_properties['regression_tolerance'],
    }
    reasons = []
    if not finite:
      reasons.append(f'eval loss is {_describe(loss)}: the model diverged')
    else:
      if ratio and loss > ratio * entropy:
        reasons.append(f'eval loss {loss:.4f} > threshold {ratio * entropy:.4f} '
                       f'(max_eval_loss_ratio {ratio} x unigram entropy {entropy:.4f})')
      if cap and loss > cap:
        reasons.append(f'eval loss {loss:.4f} > threshold {cap} (max_eval_loss)')
    blessing.set_string_custom_property('current_model', model.uri)
    blessing.set_int_custom_property('current_model_id', model.id)
    base_loss = _baseline_loss(baseline, texts) if baseline is not None else None
    if baseline is not None and base_loss is None:
      result['baseline_ignored'] = baseline.uri
    elif baseline is not None:
      result['baseline_eval_loss'] = base_loss
      result['baseline_model'] = baseline.uri
      blessing.set_string_custom_property('baseline_model', baseline.uri)
      blessing.set_int_custom_property('baseline_model_id', baseline.id)
      if finite and loss > base_loss + exec_properties['regression_tolerance']:
        reasons.append(f'eval loss {loss:.4f} is worse than the blessed baseline\'s '
                       f'{base_loss:.4f} by more than {exec_properties["regression_tolerance"]}')
    blessed = not reasons
    result['blessed'] = blessed
    result['reasons'] = reasons
    io_utils.write_string_file(os.path.join(blessing.uri, EVALUATION_FILE),
                               json.dumps(result, indent=1, allow_nan=False))
    io_utils.write_string_file(
        os.path.join(blessing.uri, 'BLESSED' if blessed else 'NOT_BLESSED'), '')
    blessing.set_int_custom_property('blessed', int(blessed))
    if finite:
      blessing.set_float_custom_property('eval_loss', loss)
      blessing.set_float_custom_property('bits_per_char', result['bits_per_char'])
    blessing.set_float_custom_property('unigram_entropy', entropy)
    logging.info('EvaluationGate: eval loss %s nats/char (unigram entropy %.4f): %s',
                 _describe(loss), entropy,
                 'BLESSED' if blessed else 'NOT BLESSED: ' + '; '.join(reasons))


class EvaluationGate(base_component.BaseComponent):
  """Blesses a candidate Model on eval loss, against a threshold and a baseline."""

  SPEC_CLASS = EvaluationGateSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
               vocabulary: types.BaseChannel, max_eval_loss_ratio: Optional[float],
               regression_tolerance: float, max_eval_loss: Optional[float] = None,
               max_eval_windows: int = 0,
               baseline_model: Optional[types.BaseChannel] = None):
    """`max_eval_loss_ratio` x unigram entropy, and `max_eval_loss` (absolute) when set."""
    super().__init__(spec=EvaluationGateSpec(
        code_version=code_version.fingerprint(__name__),
        model=model, examples=examples, vocabulary=vocabulary,
        baseline_model=baseline_model, max_eval_loss=max_eval_loss or None,
        max_eval_loss_ratio=max_eval_loss_ratio or None,
        regression_tolerance=regression_tolerance,
        max_eval_windows=max_eval_windows,
        blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
