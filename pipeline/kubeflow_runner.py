"""Compiles the pipeline for Kubeflow Pipelines v2: a PipelineSpec YAML that
`python -m pipeline.schedule` uploads (or the KFP UI accepts as is).

  python -m pipeline.kubeflow_runner [--output=outputs/kubeflow/char-rnn.yaml]
      [--image=...] [--pipeline-root=gs://...] [--corpus=gs://...] [--preset=cpu]
      [--beam-args='--runner=DataflowRunner --project=... --region=...']

Defaults come from configs.py (its "Kubeflow" section and CHAR_RNN_* variables).
The same `create_pipeline` as the local runner is compiled by TFX's
KubeflowV2DagRunner; every task runs `python -m tfx.orchestration.kubeflow.v2.
container.kubeflow_v2_run_executor --executor_class_path components.<...>` in
the image, so the components and the trainer's run_fn
(`components.trainer_module.run_fn`) come from the package installed there.

Then the compiled spec is adapted to what open-source KFP v2 runs:

* CorpusIngest runs uncached. TFX's own cache key for it is the corpus
  fingerprint, computed where the pipeline is built; on a cluster that value
  would be frozen at compile time, so the task must read the corpus every run.
  The fingerprint parameter gets a fixed value (compiling never reads the
  corpus) and the task's `cachingOptions` are emptied; every other task may be
  cached, keyed by KFP on its inputs (a new Corpus artifact misses the cache).
* The LatestBlessedModel Resolver is removed (unless --keep-resolver). TFX
  compiles it into `resolver` executors, which only Vertex AI Pipelines
  implements; the open-source KFP v2 backend rejects the whole pipeline
  ("resolver executors not implemented"). Without it the Trainer starts from
  scratch and the EvaluationGate judges on its absolute threshold only.
* Custom artifact types (charrnn.Corpus, charrnn.Vocabulary) get a type schema
  that declares their properties and names the importable class
  (components.artifacts.Corpus): TFX 1.16 refuses custom types with
  PROPERTIES, and the container entrypoint imports the class named by the
  schema's title.
* `defaultPipelineRoot` is set, so a run without a runtime pipeline root still
  writes where the artifacts are meant to go.
"""

import argparse
import contextlib
import copy
import json
import os
import shlex
import sys
from typing import Any, Dict, Iterator, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import compiler_utils
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
from tfx.types import artifact as tfx_artifact

from pipeline import configs
from pipeline import pipeline as pipeline_lib

INGEST_EXECUTOR = 'components.corpus_ingest.Executor'


# ---------------------------------------------------------------- building
def build(preset_name: Optional[str] = None, overrides: Optional[str] = None,
          corpus_sources: Optional[List[str]] = None,
          pipeline_root: Optional[str] = None,
          serving_model_dir: Optional[str] = None,
          beam_pipeline_args: Optional[List[str]] = None,
          warm_start: bool = configs.KFP_WARM_START) -> tfx.dsl.Pipeline:
  """The pipeline as the cluster runs it: same components as the local runner."""
  return pipeline_lib.create_pipeline(
      pipeline_name=configs.PIPELINE_NAME,
      pipeline_root=pipeline_root or configs.KFP_PIPELINE_ROOT,
      corpus_sources=corpus_sources or configs.KFP_CORPUS_SOURCES,
      preset=configs.get_preset(preset_name, overrides),
      trainer_run_fn=configs.TRAINER_RUN_FN,
      serving_model_dir=os.path.join(serving_model_dir or configs.KFP_SERVING_MODEL_DIR,
                                     configs.SERVING_MODEL_NAME),
      warm_start=warm_start,
      enable_cache=True,
      metadata_connection_config=None,       # KFP keeps its own ML Metadata
      beam_pipeline_args=(configs.KFP_BEAM_PIPELINE_ARGS if beam_pipeline_args is None
                          else beam_pipeline_args),
      corpus_fingerprint=configs.KFP_CORPUS_FINGERPRINT)


# ---------------------------------------------- custom artifact type schemas
_YAML_PROPERTY_TYPES = {
    tfx_artifact.PropertyType.INT: 'int',
    tfx_artifact.PropertyType.FLOAT: 'double',
    tfx_artifact.PropertyType.STRING: 'string',
}


@contextlib.contextmanager
def _custom_artifact_schemas() -> Iterator[None]:
  """While compiling, custom artifact types get a schema with their properties.

  TFX's KFP v2 compiler gives a custom type the generic `Artifact` schema with
  no properties, then rejects the type if it declares any (KeyError "Actual
  property: num_chars not expected"). Here such a type's schema lists its
  properties, and its title is the class's import path, which is what the
  container entrypoint imports to rebuild the artifact.
  """
  original = compiler_utils.get_artifact_schema

  def schema(artifact_type):
    text = original(artifact_type)
    data = yaml.safe_load(text)
    if data.get('title') != artifact_type.TYPE_NAME:   # a first-party type
      return text
    data['title'] = f'{artifact_type.__module__}.{artifact_type.__name__}'
    data['properties'] = {
        name: {'type': _YAML_PROPERTY_TYPES.get(prop.type, 'object')}
        for name, prop in (artifact_type.PROPERTIES or {}).items()}
    return yaml.dump(data, sort_keys=False)

  compiler_utils.get_artifact_schema = schema
  try:
    yield
  finally:
    compiler_utils.get_artifact_schema = original


# ------------------------------------------------------------ post-process
def _executor_of(spec: Dict[str, Any], task_name: str) -> Dict[str, Any]:
  component = spec['components'][spec['root']['dag']['tasks'][task_name]['componentRef']['name']]
  return spec['deploymentSpec']['executors'][component['executorLabel']]


def executor_class_path(spec: Dict[str, Any], task_name: str) -> Optional[str]:
  """The `--executor_class_path` a task's container runs, or None for non-containers."""
  args = _executor_of(spec, task_name).get('container', {}).get('args', [])
  return args[args.index('--executor_class_path') + 1] if '--executor_class_path' in args else None


def ingest_task_names(spec: Dict[str, Any]) -> List[str]:
  return [name for name in spec['root']['dag']['tasks']
          if executor_class_path(spec, name) == INGEST_EXECUTOR]


def strip_resolvers(spec: Dict[str, Any]) -> List[str]:
  """Removes resolver tasks and every input they fed; returns the removed task names."""
  tasks = spec['root']['dag']['tasks']
  removed = [name for name in tasks if 'resolver' in _executor_of(spec, name)]
  for name in removed:
    component = tasks.pop(name)['componentRef']['name']
    label = spec['components'].pop(component)['executorLabel']
    spec['deploymentSpec']['executors'].pop(label)
  for task in tasks.values():
    artifacts = task.get('inputs', {}).get('artifacts', {})
    dropped = [key for key, ref in artifacts.items()
               if ref.get('taskOutputArtifact', {}).get('producerTask') in removed]
    for key in dropped:
      del artifacts[key]
      definitions = spec['components'][task['componentRef']['name']]['inputDefinitions']
      definitions['artifacts'].pop(key, None)
    if 'dependentTasks' in task:
      task['dependentTasks'] = [t for t in task['dependentTasks'] if t not in removed]
      if not task['dependentTasks']:
        del task['dependentTasks']
  return removed


def postprocess(spec: Dict[str, Any], pipeline_root: str,
                keep_resolver: bool = False) -> Dict[str, Any]:
  """The compiled PipelineSpec as open-source KFP v2 should run it (see the module doc)."""
  spec = copy.deepcopy(spec)
  ingest = ingest_task_names(spec)
  if not ingest:
    raise ValueError(f'no task runs {INGEST_EXECUTOR}: nothing to exempt from caching')
  for name in ingest:
    spec['root']['dag']['tasks'][name]['cachingOptions'] = {}   # enableCache: false
  if not keep_resolver:
    strip_resolvers(spec)
  spec['defaultPipelineRoot'] = pipeline_root
  return spec


# ---------------------------------------------------------------- compile
def compile_raw(pipeline: tfx.dsl.Pipeline, image: str = configs.IMAGE) -> Dict[str, Any]:
  """The PipelineSpec exactly as TFX's KubeflowV2DagRunner compiles it (as a dict)."""
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
          default_image=image, use_pipeline_spec_2_1=True))
  with _custom_artifact_schemas():
    job = runner.run(pipeline, write_out=False)
  return job['pipelineSpec']


def write_spec(spec: Dict[str, Any], output_path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, 'w') as f:
    f.write(f'# PIPELINE DEFINITION\n# Name: {spec["pipelineInfo"]["name"]}\n'
            f'# Compiled by pipeline/kubeflow_runner.py ({spec["sdkVersion"]})\n')
    yaml.safe_dump(spec, f, sort_keys=True)


def compile_pipeline(pipeline: tfx.dsl.Pipeline, output_path: str,
                     image: str = configs.IMAGE,
                     keep_resolver: bool = False) -> Dict[str, Any]:
  """Writes the KFP-ready PipelineSpec YAML to `output_path` and returns it as a dict."""
  spec = postprocess(compile_raw(pipeline, image), pipeline.pipeline_info.pipeline_root,
                     keep_resolver=keep_resolver)
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
  parser.add_argument('--warm-start', action=argparse.BooleanOptionalAction,
                      default=configs.KFP_WARM_START)
  parser.add_argument('--keep-resolver', action='store_true',
                      help='keep the LatestBlessedModel resolver tasks (Vertex AI '
                           'Pipelines only: open-source KFP rejects them)')
  return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  pipeline = build(
      preset_name=args.preset, overrides=args.overrides,
      corpus_sources=[s.strip() for s in args.corpus.split(',') if s.strip()],
      pipeline_root=args.pipeline_root, serving_model_dir=args.serving_model_dir,
      beam_pipeline_args=shlex.split(args.beam_args), warm_start=args.warm_start)
  spec = compile_pipeline(pipeline, args.output, image=args.image,
                          keep_resolver=args.keep_resolver)
  if args.warm_start and not args.keep_resolver:
    print('note: warm start needs the LatestBlessedModel resolver, which open-source KFP '
          'cannot run; this spec trains from scratch and gates on max_eval_loss only '
          '(--keep-resolver keeps it for Vertex AI Pipelines)', file=sys.stderr)
  print(json.dumps({'pipeline_spec': os.path.abspath(args.output),
                    'tasks': sorted(spec['root']['dag']['tasks']),
                    'uncached': ingest_task_names(spec), 'image': args.image,
                    'resolver': 'kept' if args.keep_resolver else 'removed'}))
  return args.output


if __name__ == '__main__':
  main()
