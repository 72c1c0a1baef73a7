"""pipeline/kubeflow_runner.py: the compiled KFP v2 PipelineSpec.

One spec is compiled through the CLI (`python -m pipeline.kubeflow_runner`, what
`make kubeflow-compile` runs) and read back with the kfp SDK's own loader; one
raw TFX compile (resolver still in) checks the post-processing against it.
"""

import os
import shlex
import subprocess
import sys

import pytest
import yaml

from pipeline import configs
from pipeline import kubeflow_runner

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGE = 'registry.example.com/char-rnn-tfx:test-123'
PIPELINE_ROOT = 'gs://test-bucket/pipeline_root'
SERVING_DIR = 'gs://test-bucket/serving_model'
# A corpus nobody can read: compiling must not try to.
CORPUS = 'gs://no-such-bucket-char-rnn/corpus/*.txt'
BEAM_ARGS = ['--runner=DataflowRunner', '--project=test-project', '--region=europe-west4']

# The tutorial's pipeline, as the spec must wire it (producer tasks of each task).
EXPECTED_UPSTREAM = {
    'CorpusIngest': set(),
    'VocabularyGen': {'CorpusIngest'},
    'WindowGen': {'CorpusIngest', 'VocabularyGen'},
    'CharRnnTrainer': {'WindowGen', 'VocabularyGen'},
    'EvaluationGate': {'CharRnnTrainer', 'WindowGen', 'VocabularyGen'},
    'Pusher': {'CharRnnTrainer', 'EvaluationGate'},
}
EXPECTED_EXECUTORS = {
    'CorpusIngest': 'components.corpus_ingest.Executor',
    'VocabularyGen': 'components.vocabulary_gen.Executor',
    'WindowGen': 'components.window_gen.Executor',
    'CharRnnTrainer': 'components.trainer.Executor',
    'EvaluationGate': 'components.evaluation_gate.Executor',
    'Pusher': 'tfx.components.pusher.executor.Executor',
}


@pytest.fixture(scope='module')
def spec_path(tmp_path_factory) -> str:
  """The spec as `python -m pipeline.kubeflow_runner` writes it, with every flag given."""
  path = str(tmp_path_factory.mktemp('kfp') / 'char-rnn.yaml')
  result = subprocess.run(
      [sys.executable, '-m', 'pipeline.kubeflow_runner', f'--output={path}',
       f'--image={IMAGE}', f'--pipeline-root={PIPELINE_ROOT}', f'--corpus={CORPUS}',
       f'--serving-model-dir={SERVING_DIR}', '--preset=tiny', '--overrides=epochs=3',
       f'--beam-args={shlex.join(BEAM_ARGS)}', '--warm-start'],
      cwd=REPO_DIR, capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, PYTHONWARNINGS='ignore', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-4000:]
  return path


@pytest.fixture(scope='module')
def spec(spec_path):
  with open(spec_path) as f:
    return yaml.safe_load(f)


@pytest.fixture(scope='module')
def raw_spec():
  """TFX's compile before post-processing, warm start on, so the resolver feeds two tasks."""
  pipeline = kubeflow_runner.build(
      preset_name='tiny', corpus_sources=[CORPUS], pipeline_root=PIPELINE_ROOT,
      serving_model_dir=SERVING_DIR, beam_pipeline_args=BEAM_ARGS, warm_start=True)
  return kubeflow_runner.compile_raw(pipeline, image=IMAGE)


def _upstream(task):
  return {ref['taskOutputArtifact']['producerTask']
          for ref in task.get('inputs', {}).get('artifacts', {}).values()}


def test_kfp_sdk_loads_the_spec_with_one_task_per_component_wired_like_the_tutorial(spec_path):
  from kfp import components as kfp_components
  loaded = kfp_components.load_component_from_file(spec_path)
  assert loaded.name == configs.PIPELINE_NAME
  tasks = loaded.pipeline_spec.root.dag.tasks
  assert set(tasks) == set(EXPECTED_UPSTREAM)
  for name, task in tasks.items():
    producers = {ref.task_output_artifact.producer_task
                 for ref in task.inputs.artifacts.values()}
    assert producers == EXPECTED_UPSTREAM[name], name
    assert set(task.dependent_tasks) == EXPECTED_UPSTREAM[name], name
  assert loaded.pipeline_spec.default_pipeline_root == PIPELINE_ROOT


def test_every_task_runs_an_executor_that_imports_from_the_installed_package(spec):
  from tfx.utils import import_utils
  import components
  package_dir = os.path.dirname(os.path.abspath(components.__file__))
  for name in spec['root']['dag']['tasks']:
    path = kubeflow_runner.executor_class_path(spec, name)
    assert path == EXPECTED_EXECUTORS[name]
    executor = import_utils.import_class_by_path(path)
    if path.startswith('components.'):
      assert os.path.dirname(os.path.abspath(sys.modules[executor.__module__].__file__)) == package_dir


def test_custom_artifact_schemas_name_importable_classes_with_their_properties(spec):
  from tfx.utils import import_utils
  from components import artifacts
  schemas = {}
  for component in spec['components'].values():
    for direction in ('inputDefinitions', 'outputDefinitions'):
      for definition in component.get(direction, {}).get('artifacts', {}).values():
        schema = yaml.safe_load(definition['artifactType']['instanceSchema'])
        schemas[schema['title']] = schema
  for cls in (artifacts.Corpus, artifacts.Vocabulary):
    schema = schemas[f'{cls.__module__}.{cls.__name__}']
    assert import_utils.import_class_by_path(schema['title']) is cls
    assert set(schema['properties']) == set(cls.PROPERTIES)


def test_containers_run_the_tfx_kfp_v2_entrypoint_in_the_image_with_the_beam_args(spec):
  for executor in spec['deploymentSpec']['executors'].values():
    container = executor['container']
    assert container['image'] == IMAGE
    assert container['command'] == [
        'python', '-m', 'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor']
    assert container['args'][-len(BEAM_ARGS):] == BEAM_ARGS
    assert '{{$}}' in container['args']


def test_corpus_ingest_runs_uncached_while_every_other_task_may_cache(spec):
  tasks = spec['root']['dag']['tasks']
  assert not tasks['CorpusIngest'].get('cachingOptions', {}).get('enableCache', False)
  for name, task in tasks.items():
    if name != 'CorpusIngest':
      assert task['cachingOptions'] == {'enableCache': True}, name


def test_compiling_fixes_the_corpus_fingerprint_instead_of_reading_the_corpus(spec):
  parameters = spec['root']['dag']['tasks']['CorpusIngest']['inputs']['parameters']
  assert parameters['source_fingerprint']['runtimeValue']['constant'] == \
      configs.KFP_CORPUS_FINGERPRINT
  assert yaml.safe_load(parameters['sources']['runtimeValue']['constant']) == [CORPUS]


def test_preset_overrides_and_push_destination_reach_the_task_parameters(spec):
  import json
  tasks = spec['root']['dag']['tasks']
  custom_config = json.loads(
      tasks['CharRnnTrainer']['inputs']['parameters']['custom_config']['runtimeValue']['constant'])
  tiny = configs.get_preset('tiny', 'epochs=3')
  assert custom_config['epochs'] == 3
  assert custom_config['rnn_units'] == tiny.rnn_units
  assert tasks['CharRnnTrainer']['inputs']['parameters']['run_fn']['runtimeValue'][
      'constant'] == configs.TRAINER_RUN_FN
  destination = json.loads(
      tasks['Pusher']['inputs']['parameters']['push_destination']['runtimeValue']['constant'])
  assert destination['filesystem']['base_directory'] == f'{SERVING_DIR}/char_rnn'


def test_tfx_compiles_the_blessed_model_resolver_into_executors_oss_kfp_rejects(raw_spec):
  """Pins why post-processing strips them: `resolver` executors (Vertex AI only)."""
  resolvers = [label for label, executor in raw_spec['deploymentSpec']['executors'].items()
               if 'resolver' in executor]
  assert len(resolvers) == 2
  trainer_inputs = raw_spec['root']['dag']['tasks']['CharRnnTrainer']['inputs']['artifacts']
  assert 'base_model' in trainer_inputs      # warm start wired to the resolver


def test_stripping_the_resolver_drops_its_tasks_and_the_inputs_they_fed(raw_spec):
  spec = kubeflow_runner.postprocess(raw_spec, PIPELINE_ROOT)
  tasks = spec['root']['dag']['tasks']
  assert set(tasks) == set(EXPECTED_UPSTREAM)
  assert not any('resolver' in e for e in spec['deploymentSpec']['executors'].values())
  assert 'base_model' not in tasks['CharRnnTrainer']['inputs']['artifacts']
  assert 'baseline_model' not in tasks['EvaluationGate']['inputs']['artifacts']
  assert 'baseline_model' not in spec['components']['EvaluationGate']['inputDefinitions'][
      'artifacts']
  for task in tasks.values():
    assert set(task.get('dependentTasks', [])) <= set(tasks)
  assert 'latest_blessed_model_resolver' not in str(spec)


def test_keep_resolver_leaves_tfx_resolver_tasks_for_vertex(raw_spec):
  spec = kubeflow_runner.postprocess(raw_spec, PIPELINE_ROOT, keep_resolver=True)
  assert set(spec['root']['dag']['tasks']) > set(EXPECTED_UPSTREAM)
  assert 'base_model' in spec['root']['dag']['tasks']['CharRnnTrainer']['inputs']['artifacts']
  assert spec['root']['dag']['tasks']['CorpusIngest']['cachingOptions'] == {}


def test_postprocess_refuses_a_spec_without_an_ingest_task(raw_spec):
  spec = kubeflow_runner.postprocess(raw_spec, PIPELINE_ROOT)
  del spec['root']['dag']['tasks']['CorpusIngest']
  with pytest.raises(ValueError, match='corpus_ingest'):
    kubeflow_runner.postprocess(spec, PIPELINE_ROOT)
