"""Compiles the pipeline for Kubeflow Pipelines v2: a PipelineSpec YAML that
`python -m pipeline.schedule` uploads (or the KFP UI accepts as is).

  python -m pipeline.kubeflow_runner [--output=outputs/kubeflow/char-rnn.yaml]
      [--image=...] [--pipeline-root=gs://...] [--corpus=gs://...] [--preset=cpu]
      [--serving-model-dir=gs://...] [--no-warm-start]
      [--beam-args='--runner=DataflowRunner --project=... --region=...']
      [--trainer-workers=N --vertex-project=... --vertex-region=...
       --trainer-machine-type=n1-standard-8]

Defaults come from configs.py (its "Kubeflow" section and CHAR_RNN_* variables).
The same `create_pipeline` as the local runner is compiled by TFX's
KubeflowV2DagRunner; every task runs `python -m tfx.orchestration.kubeflow.v2.
container.kubeflow_v2_run_executor --executor_class_path components.<...>` in
the image, so the components and the trainer's run_fn
(`components.trainer_module.run_fn`) come from the package installed there.

Then the compiled spec is adapted to what open-source KFP v2 runs:

* CorpusIngest and ServedModel run uncached. TFX's cache keys for them are
  the corpus fingerprint and the served model's fingerprint, computed where
  the pipeline is built; on a cluster those values would be frozen at compile
  time, so both tasks must look at the corpus and at the serving directory
  every run. Their fingerprint parameters get fixed values (compiling reads
  neither) and their `cachingOptions` are emptied; every other task may be
  cached, keyed by KFP on its inputs (a new Corpus or served Model artifact
  misses the cache).
* `defaultPipelineRoot` is set, so a run without a runtime pipeline root still
  writes where the artifacts are meant to go.

With --trainer-workers=N (N > 1) the Trainer task runs
`components.vertex_trainer.Executor`, TFX's Vertex AI training launcher: it
starts a Vertex AI CustomJob whose worker pools (one chief, N - 1 workers, the
pipeline image on --trainer-machine-type) each run the Trainer's executor
(`components.vertex_trainer.WorkerExecutor`) with the task's artifacts;
Vertex gives every replica its TF_CONFIG and run_fn trains data-parallel
(components/multiworker.py), the chief writing the Model. The global batch is
the preset's batch_size, so it must divide by N (checked here). The launcher
needs Vertex AI permissions in the KFP task (Workload Identity or a key).

The Pusher task runs our executor (`components.pusher.Executor`): TFX's, with a
push that makes a version visible only when complete (a rename on a POSIX
filesystem; on gs://, where objects appear whole, saved_model.pb last), and
ServedModel takes only complete, loadable versions.

Nothing else is changed. There is no Resolver (ServedModel reads the Pusher's
directory instead of ML Metadata), so the Trainer warm-starts from the served
model (--warm-start, the default; CHAR_RNN_KFP_WARM_START=0 turns it off) and
the EvaluationGate compares against it, on open-source KFP as locally; a spec
that still held a `resolver` executor (which only Vertex AI Pipelines
implements) is refused. The custom artifact types need no help either: they
declare no PROPERTIES, and their type names (charrnn.Corpus,
charrnn.Vocabulary) are the schema titles the container entrypoint imports to
rebuild them (the `charrnn` package is in the image).
"""

import argparse
import copy
import json
import os
import shlex
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from tfx.dsl.components.base import executor_spec
from tfx.utils import json_utils

from pipeline import configs
from pipeline import pipeline as pipeline_lib

UNCACHED_EXECUTORS = configs.KFP_UNCACHED_EXECUTORS


# ---------------------------------------------------------------- building
def build(preset_name: Optional[str] = None, overrides: Optional[str] = None,
          corpus_sources: Optional[List[str]] = None,
          pipeline_root: Optional[str] = None,
          serving_model_dir: Optional[str] = None,
          beam_pipeline_args: Optional[List[str]] = None,
          warm_start: bool = configs.KFP_WARM_START,
          trainer_workers: int = configs.KFP_TRAINER_WORKERS,
          image: str = configs.IMAGE,
          vertex_project: str = configs.VERTEX_PROJECT,
          vertex_region: str = configs.VERTEX_REGION,
          trainer_machine_type: str = configs.KFP_TRAINER_MACHINE_TYPE) -> tfx.dsl.Pipeline:
  """The pipeline as the cluster runs it: same components as the local runner.

  `trainer_workers` > 1 puts the Trainer on a Vertex AI worker pool of that many
  workers running `image` (train_on_worker_pool); 0 or 1 trains in its KFP task.
  """
  if trainer_workers < 0:
    raise ValueError(f'trainer_workers must be >= 0, not {trainer_workers}')
  preset = configs.get_preset(preset_name, overrides)
  if trainer_workers > 1 and preset.batch_size % trainer_workers:
    raise ValueError(f'batch_size={preset.batch_size} (the global batch) does not divide '
                     f'over {trainer_workers} trainer workers: choose a multiple of '
                     f'{trainer_workers}')
  pipeline = pipeline_lib.create_pipeline(
      pipeline_name=configs.PIPELINE_NAME,
      pipeline_root=pipeline_root or configs.KFP_PIPELINE_ROOT,
      corpus_sources=corpus_sources or configs.KFP_CORPUS_SOURCES,
      preset=preset,
      trainer_run_fn=configs.TRAINER_RUN_FN,
      serving_model_dir=os.path.join(serving_model_dir or configs.KFP_SERVING_MODEL_DIR,
                                     configs.SERVING_MODEL_NAME),
      warm_start=warm_start,
      enable_cache=True,
      metadata_connection_config=None,       # KFP keeps its own ML Metadata
      beam_pipeline_args=(configs.KFP_BEAM_PIPELINE_ARGS if beam_pipeline_args is None
                          else beam_pipeline_args),
      corpus_fingerprint=configs.KFP_CORPUS_FINGERPRINT,
      served_model_fingerprint=configs.KFP_SERVED_MODEL_FINGERPRINT)
  if trainer_workers > 1:
    train_on_worker_pool(pipeline, trainer_workers, image, vertex_project, vertex_region,
                         trainer_machine_type)
  return pipeline


def train_on_worker_pool(pipeline: tfx.dsl.Pipeline, workers: int, image: str,
                         project: str, region: str, machine_type: str) -> None:
  """Gives the Trainer TFX's Vertex AI launcher and the worker pool spec (module doc)."""
  from components import vertex_trainer  # pylint: disable=g-import-not-at-top
  from components.trainer import CharRnnTrainer, code_fingerprint  # pylint: disable=g-import-not-at-top
  trainers = [c for c in pipeline.components if isinstance(c, CharRnnTrainer)]
  if len(trainers) != 1:
    raise ValueError(f'expected one CharRnnTrainer in the pipeline, found {len(trainers)}')
  [trainer] = trainers
  custom_config = json_utils.loads(trainer.exec_properties['custom_config'])
  custom_config.update(vertex_trainer.custom_config(project, region, image, workers,
                                                    machine_type))
  # The launcher and the worker executor are code this Trainer now runs: part of its key.
  custom_config['code_fingerprint'] = code_fingerprint(trainer.exec_properties['run_fn'],
                                                       vertex_trainer.__name__)
  trainer.exec_properties['custom_config'] = json_utils.dumps(custom_config)
  trainer.executor_spec = executor_spec.ExecutorClassSpec(vertex_trainer.Executor)


# ------------------------------------------------------------ post-process
def _executor_of(spec: Dict[str, Any], task_name: str) -> Dict[str, Any]:
  component = spec['components'][spec['root']['dag']['tasks'][task_name]['componentRef']['name']]
  return spec['deploymentSpec']['executors'][component['executorLabel']]


def executor_class_path(spec: Dict[str, Any], task_name: str) -> Optional[str]:
  """The `--executor_class_path` a task's container runs, or None for non-containers."""
  args = _executor_of(spec, task_name).get('container', {}).get('args', [])
  return args[args.index('--executor_class_path') + 1] if '--executor_class_path' in args else None


def uncached_task_names(spec: Dict[str, Any]) -> List[str]:
  """The tasks that must run every time: those running one of UNCACHED_EXECUTORS."""
  return [name for name in spec['root']['dag']['tasks']
          if executor_class_path(spec, name) in UNCACHED_EXECUTORS]


def resolver_task_names(spec: Dict[str, Any]) -> List[str]:
  return [name for name in spec['root']['dag']['tasks'] if 'resolver' in _executor_of(spec, name)]


def postprocess(spec: Dict[str, Any], pipeline_root: str) -> Dict[str, Any]:
  """The compiled PipelineSpec as open-source KFP v2 should run it (see the module doc)."""
  spec = copy.deepcopy(spec)
  resolvers = resolver_task_names(spec)
  if resolvers:
    raise ValueError(f'tasks {resolvers} run resolver executors, which open-source KFP v2 '
                     'cannot run (the pipeline reads the served model with ServedModel)')
  uncached = uncached_task_names(spec)
  missing = sorted(set(UNCACHED_EXECUTORS) - {executor_class_path(spec, n) for n in uncached})
  if missing:
    raise ValueError(f'no task runs {", ".join(missing)}: the spec is not this pipeline')
  for name in uncached:
    spec['root']['dag']['tasks'][name]['cachingOptions'] = {}   # enableCache: false
  spec['defaultPipelineRoot'] = pipeline_root
  return spec


# ---------------------------------------------------------------- compile
def compile_raw(pipeline: tfx.dsl.Pipeline, image: str = configs.IMAGE) -> Dict[str, Any]:
  """The PipelineSpec exactly as TFX's KubeflowV2DagRunner compiles it (as a dict)."""
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
          default_image=image, use_pipeline_spec_2_1=True))
  return runner.run(pipeline, write_out=False)['pipelineSpec']


def write_spec(spec: Dict[str, Any], output_path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, 'w') as f:
    f.write(f'# PIPELINE DEFINITION\n# Name: {spec["pipelineInfo"]["name"]}\n'
            f'# Compiled by pipeline/kubeflow_runner.py ({spec["sdkVersion"]})\n')
    yaml.safe_dump(spec, f, sort_keys=True)


def compile_pipeline(pipeline: tfx.dsl.Pipeline, output_path: str,
                     image: str = configs.IMAGE) -> Dict[str, Any]:
  """Writes the KFP-ready PipelineSpec YAML to `output_path` and returns it as a dict."""
  spec = postprocess(compile_raw(pipeline, image), pipeline.pipeline_info.pipeline_root)
  write_spec(spec, output_path)
  return spec


def _parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m pipeline.kubeflow_runner', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--output', default=configs.KFP_PIPELINE_SPEC,
                      help='PipelineSpec YAML to write (default %(default)s)')
  parser.add_argument('--image', default=configs.IMAGE,
                      help='the pipeline image every task runs (default %(default)s)')
  parser.add_argument('--pipeline-root', default=configs.KFP_PIPELINE_ROOT,
                      help='gs:// root of the artifacts (default %(default)s)')
  parser.add_argument('--corpus', default=','.join(configs.KFP_CORPUS_SOURCES),
                      help='comma-separated corpus sources as the cluster sees them')
  parser.add_argument('--serving-model-dir', default=configs.KFP_SERVING_MODEL_DIR,
                      help='the Pusher base; versions land in <this>/char_rnn/<version>')
  parser.add_argument('--preset', default=configs.PRESET_NAME, choices=sorted(configs.PRESETS))
  parser.add_argument('--overrides', default=None,
                      help='preset overrides, e.g. "epochs=2,rnn_units=256"')
  parser.add_argument('--beam-args', default=shlex.join(configs.KFP_BEAM_PIPELINE_ARGS),
                      help='Beam pipeline args (quoted, space-separated)')
  parser.add_argument('--trainer-workers', type=int, default=configs.KFP_TRAINER_WORKERS,
                      help='train on a Vertex AI worker pool of this many workers (one '
                           'chief); 0 or 1: in the KFP task (default %(default)s)')
  parser.add_argument('--trainer-machine-type', default=configs.KFP_TRAINER_MACHINE_TYPE,
                      help='machine type of each worker (default %(default)s)')
  parser.add_argument('--vertex-project', default=configs.VERTEX_PROJECT,
                      help='GCP project of the Vertex AI CustomJob (default %(default)s)')
  parser.add_argument('--vertex-region', default=configs.VERTEX_REGION,
                      help='Vertex AI region of the CustomJob (default %(default)s)')
  parser.add_argument('--warm-start', action=argparse.BooleanOptionalAction,
                      default=configs.KFP_WARM_START,
                      help='start training from the served model\'s weights when they fit '
                           '(default %(default)s)')
  return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  pipeline = build(
      preset_name=args.preset, overrides=args.overrides,
      corpus_sources=[s.strip() for s in args.corpus.split(',') if s.strip()],
      pipeline_root=args.pipeline_root, serving_model_dir=args.serving_model_dir,
      beam_pipeline_args=shlex.split(args.beam_args), warm_start=args.warm_start,
      trainer_workers=args.trainer_workers, image=args.image,
      vertex_project=args.vertex_project, vertex_region=args.vertex_region,
      trainer_machine_type=args.trainer_machine_type)
  spec = compile_pipeline(pipeline, args.output, image=args.image)
  print(json.dumps({'pipeline_spec': os.path.abspath(args.output),
                    'tasks': sorted(spec['root']['dag']['tasks']),
                    'uncached': uncached_task_names(spec), 'image': args.image,
                    'warm_start': args.warm_start,
                    'trainer_workers': args.trainer_workers}))
  return args.output


if __name__ == '__main__':
  main()
