"""ServedModel: the model TF Serving is serving now, as a Model artifact.

Spec:
  parameters  serving_model_dir (the Pusher's base: <dir>/<version>/saved_model.pb),
              served_fingerprint (what was there when the pipeline was built)
  outputs     model: Model (`Format-Serving/` = a copy of the newest complete and
              loadable version (components.pusher decides which are);
              empty, with served_version 0, when nothing is served yet)

It is the baseline the EvaluationGate must not fall behind and the base a warm
start continues from. Only blessed models are pushed, so the newest complete
version is the latest blessed model: unlike TFX's LatestBlessedModel Resolver
this needs no ML Metadata query, so it also works on open-source Kubeflow
Pipelines (whose v2 backend cannot run resolver executors), and it compares
against what is really being served.

TFX's cache key sees only parameters, so `served_fingerprint` carries a hash of
the served model's SavedModel fingerprint: a newly served model runs this again,
a re-push of the same model does not.
"""

import hashlib
import os
from typing import Any, Dict, List, Optional

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from components import code_version
from components import pusher

NOTHING_SERVED = 'nothing-served'


class ServedModelSpec(ComponentSpec):
  PARAMETERS = {
      code_version.PARAMETER_NAME: code_version.PARAMETER,
      'serving_model_dir': ExecutionParameter(type=str),
      'served_fingerprint': ExecutionParameter(type=str),
  }
  INPUTS = {}
  OUTPUTS = {'model': ChannelParameter(type=standard_artifacts.Model)}


def latest_version_dir(serving_model_dir: str) -> Optional[str]:
  """The newest version directory that holds a complete, loadable SavedModel.

  components.pusher owns the rules: names of ASCII digits only, and a version
  counts only if its saved_model.pb parses and its variables read back. A
  version that does not (half-copied by a killed push of TFX's own Pusher, a
  truncated file) is skipped with one log line, so neither the gate's baseline
  nor a warm start is ever a broken model, and no later run crashes on it.
  """
  return pusher.latest_complete_version(serving_model_dir)


def served_fingerprint(serving_model_dir: str) -> str:
  """Identifies the served model by content, not by version number."""
  path = latest_version_dir(serving_model_dir)
  if path is None:
    return NOTHING_SERVED
  digest = hashlib.sha256()
  for name in ('fingerprint.pb', 'saved_model.pb'):
    candidate = os.path.join(path, name)
    if tf.io.gfile.exists(candidate):
      with tf.io.gfile.GFile(candidate, 'rb') as f:
        digest.update(f.read())
      break
  return digest.hexdigest()


def is_empty(model: types.Artifact) -> bool:
  """True for the placeholder ServedModel emits when nothing is served yet."""
  return not tf.io.gfile.exists(
      os.path.join(path_utils.serving_model_path(model.uri), 'saved_model.pb'))


class Executor(base_executor.BaseExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    model = artifact_utils.get_single_instance(output_dict['model'])
    source = latest_version_dir(exec_properties['serving_model_dir'])
    if source is None:
      logging.info('ServedModel: nothing is served from %s yet',
                   exec_properties['serving_model_dir'])
      model.set_int_custom_property('served_version', 0)
      return
    io_utils.copy_dir(source, path_utils.serving_model_path(model.uri))
    model.set_int_custom_property('served_version', int(os.path.basename(source)))
    model.set_string_custom_property('served_from', source)
    logging.info('ServedModel: baseline is %s', source)


class ServedModel(base_component.BaseComponent):
  """Snapshots the newest pushed model version as a Model artifact."""

  SPEC_CLASS = ServedModelSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, serving_model_dir: str, fingerprint: Optional[str] = None):
    """`fingerprint` defaults to `served_fingerprint(serving_model_dir)`, computed now."""
    super().__init__(spec=ServedModelSpec(
        code_version=code_version.fingerprint(__name__),
        serving_model_dir=serving_model_dir,
        served_fingerprint=fingerprint or served_fingerprint(serving_model_dir),
        model=types.Channel(type=standard_artifacts.Model)))
