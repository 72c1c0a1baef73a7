"""CharRnnTrainer on a Vertex AI worker pool: TFX's Vertex Trainer extension, our executor inside.

`pipeline/kubeflow_runner.py --trainer-workers=N` (N > 1) gives the Trainer
task this module's `Executor`: TFX's Vertex AI training launcher
(tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor).
Run in the KFP task, it starts a Vertex AI CustomJob from custom_config's
`ai_platform_training_args` (`worker_pool_specs`: one chief and N - 1 workers,
the pipeline image, a machine type; see `training_args`) and waits for it. Every
replica runs `python -m tfx.scripts.run_executor --executor_class_path
components.vertex_trainer.WorkerExecutor` with the task's artifacts, and Vertex
gives each its TF_CONFIG, so run_fn trains data-parallel
(components/multiworker.py).

`WorkerExecutor` is our CharRnnTrainer executor (components.trainer.Executor,
the vocabulary and window counts for run_fn) with two differences that a worker
pool needs:
* the launcher's keys are taken out of custom_config before run_fn sees it
  (TrainingConfig refuses unknown keys);
* a replica that is not the chief writes no model, so it skips TFX's check that
  run_fn wrote one (which would fail the replica, and with it the job).
"""

from typing import Any, Dict, List

from tfx import types
from tfx.components.trainer import fn_args_utils
from tfx.components.util import udf_utils
from tfx.extensions.google_cloud_ai_platform import constants as vertex_constants
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_executor

from components import multiworker
from components import trainer

# custom_config keys read by the launcher, never by run_fn.
LAUNCHER_KEYS = (vertex_executor.TRAINING_ARGS_KEY, vertex_executor.JOB_ID_KEY,
                 vertex_executor.LABELS_KEY, vertex_executor.ENABLE_UCAIP_KEY,
                 vertex_executor.UCAIP_REGION_KEY, vertex_constants.ENABLE_VERTEX_KEY,
                 vertex_constants.VERTEX_REGION_KEY)


def training_args(project: str, image: str, workers: int, machine_type: str) -> Dict[str, Any]:
  """`ai_platform_training_args`: a CustomJob of one chief and `workers - 1` workers.

  Vertex AI calls worker pool 0 'chief' and pool 1 'worker' in each replica's
  TF_CONFIG; every replica runs the pipeline image (the extension sets its
  command). When a replica's machine restarts (maintenance, a crash), Vertex AI
  restarts the whole job (`restart_job_on_worker_restart`): a collective job
  cannot take one worker back mid-step, and a restarted job resumes from the
  chief's newest step backup (components/multiworker.py).
  """
  if workers < 2:
    raise ValueError(f'a Trainer worker pool needs at least 2 workers, not {workers}')
  pool = {'machine_spec': {'machine_type': machine_type}, 'container_spec': {'image_uri': image}}
  return {'project': project,
          'job_spec': {'worker_pool_specs': [dict(pool, replica_count=1),
                                             dict(pool, replica_count=workers - 1)],
                       'scheduling': {'restart_job_on_worker_restart': True}}}


def custom_config(project: str, region: str, image: str, workers: int,
                  machine_type: str) -> Dict[str, Any]:
  """The launcher's keys, to add to the Trainer's custom_config."""
  return {vertex_constants.ENABLE_VERTEX_KEY: True,
          vertex_constants.VERTEX_REGION_KEY: region,
          vertex_executor.TRAINING_ARGS_KEY: training_args(project, image, workers,
                                                           machine_type)}


class WorkerExecutor(trainer.Executor):
  """What each replica of the CustomJob runs (see the module doc)."""

  def _GetFnArgs(self, input_dict: Dict[str, List[types.Artifact]],
                 output_dict: Dict[str, List[types.Artifact]],
                 exec_properties: Dict[str, Any]) -> fn_args_utils.FnArgs:
    fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
    fn_args.custom_config = {k: v for k, v in fn_args.custom_config.items()
                             if k not in LAUNCHER_KEYS}
    return fn_args

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    cluster = multiworker.cluster_from_env()
    if cluster is None or cluster.is_chief:
      return super().Do(input_dict, output_dict, exec_properties)
    self._log_startup(input_dict, output_dict, exec_properties)
    udf_utils.get_fn(exec_properties, 'run_fn')(
        self._GetFnArgs(input_dict, output_dict, exec_properties))


class Executor(vertex_executor.GenericExecutor):
  """Launches the CustomJob whose replicas run WorkerExecutor (in the KFP task)."""

  def _GetExecutorClass(self):
    return WorkerExecutor
