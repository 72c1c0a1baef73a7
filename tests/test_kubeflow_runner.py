"""pipeline/kubeflow_runner.py: the compiled KFP v2 PipelineSpec.

One spec is compiled through the CLI (`python -m pipeline.kubeflow_runner`, what
`make kubeflow-compile` runs; warm start on) and read back with the kfp SDK's
own loader; one raw TFX compile (warm start off, before post-processing) checks
what TFX itself produces and what the post-processing changes.
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

# The tutorial's pipeline, as the spec must wire it (producer tasks of each
# task), warm start on: the served model is the Trainer's base and the gate's
# baseline.
EXPECTED_UPSTREAM = {
    'CorpusIngest': set(),
    'ServedModel': set(),
    'VocabularyGen': {'CorpusIngest'},
    'WindowGen': {'CorpusIngest', 'VocabularyGen'},
    'CharRnnTrainer': {'CorpusIngest', 'WindowGen', 'VocabularyGen', 'ServedModel'},
    'EvaluationGate': {'CharRnnTrainer', 'WindowGen', 'VocabularyGen', 'ServedModel'},
    'Pusher': {'CharRnnTrainer', 'EvaluationGate'},
}
EXPECTED_EXECUTORS = {
    'CorpusIngest': 'components.corpus_ingest.Executor',
    'ServedModel': 'components.served_model.Executor',
    'VocabularyGen': 'components.vocabulary_gen.Executor',
    'WindowGen': 'components.window_gen.Executor',
    'CharRnnTrainer': 'components.trainer.Executor',
    'EvaluationGate': 'components.evaluation_gate.Executor',
    'Pusher': 'components.pusher.Executor',
}
UNCACHED = {'CorpusIngest', 'ServedModel'}


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
  """TFX's compile before post-processing, warm start off."""
  pipeline = kubeflow_runner.build(
      preset_name='tiny', corpus_sources=[CORPUS], pipeline_root=PIPELINE_ROOT,
      serving_model_dir=SERVING_DIR, beam_pipeline_args=BEAM_ARGS, warm_start=False)
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


def test_custom_artifact_schemas_are_tfx_own_and_their_titles_import_the_classes(spec):
  """No compiler patch: the titles are the TYPE_NAMEs, importable through `charrnn`."""
  from tfx.utils import import_utils
  import charrnn
  from components import artifacts
  schemas = {}
  for component in spec['components'].values():
    for direction in ('inputDefinitions', 'outputDefinitions'):
      for definition in component.get(direction, {}).get('artifacts', {}).values():
        schema = yaml.safe_load(definition['artifactType']['instanceSchema'])
        schemas.setdefault(schema['title'], []).append(schema)
  for cls in (artifacts.Corpus, artifacts.Vocabulary):
    assert cls.TYPE_NAME.startswith('charrnn.') and not cls.PROPERTIES
    assert schemas[cls.TYPE_NAME]
    for schema in schemas[cls.TYPE_NAME]:
      assert schema == {'title': cls.TYPE_NAME, 'type': 'object'}
    assert import_utils.import_class_by_path(cls.TYPE_NAME) is cls
    assert getattr(charrnn, cls.__name__) is cls
  assert not [title for title in schemas if title.startswith('components.')]


def test_the_entrypoint_resolves_the_schema_titles_to_our_classes(spec):
  """The container entrypoint's own lookup: title -> class path -> artifact class."""
  from kfp.pipeline_spec import pipeline_spec_pb2
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as utils
  from tfx.utils import import_utils
  from components import artifacts
  definitions = spec['components']['WindowGen']['inputDefinitions']['artifacts']
  for key, cls in (('corpus', artifacts.Corpus), ('vocabulary', artifacts.Vocabulary)):
    type_schema = pipeline_spec_pb2.ArtifactTypeSchema(
        instance_schema=definitions[key]['artifactType']['instanceSchema'])
    path = utils._retrieve_class_path(type_schema)  # pylint: disable=protected-access
    assert import_utils.import_class_by_path(path) is cls


def test_containers_run_the_tfx_kfp_v2_entrypoint_in_the_image_with_the_beam_args(spec):
  for executor in spec['deploymentSpec']['executors'].values():
    container = executor['container']
    assert container['image'] == IMAGE
    assert container['command'] == [
        'python', '-m', 'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor']
    assert container['args'][-len(BEAM_ARGS):] == BEAM_ARGS
    assert '{{$}}' in container['args']


def test_corpus_ingest_and_served_model_run_uncached_while_every_other_task_may_cache(spec):
  tasks = spec['root']['dag']['tasks']
  for name, task in tasks.items():
    if name in UNCACHED:
      assert task['cachingOptions'] == {}, name            # enableCache: false
    else:
      assert task['cachingOptions'] == {'enableCache': True}, name
  assert sorted(kubeflow_runner.uncached_task_names(spec)) == sorted(UNCACHED)


def test_compiling_fixes_the_fingerprints_instead_of_reading_corpus_or_serving_dir(spec):
  tasks = spec['root']['dag']['tasks']
  parameters = tasks['CorpusIngest']['inputs']['parameters']
  assert parameters['source_fingerprint']['runtimeValue']['constant'] == \
      configs.KFP_CORPUS_FINGERPRINT
  assert yaml.safe_load(parameters['sources']['runtimeValue']['constant']) == [CORPUS]
  served = tasks['ServedModel']['inputs']['parameters']
  assert served['served_fingerprint']['runtimeValue']['constant'] == \
      configs.KFP_SERVED_MODEL_FINGERPRINT
  # The Pusher's base, as the cluster sees it: ServedModel reads what the Pusher writes.
  assert served['serving_model_dir']['runtimeValue']['constant'] == f'{SERVING_DIR}/char_rnn'


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


def test_tfx_compiles_served_model_cached_and_without_resolvers(raw_spec):
  """Pins what post-processing has to change: TFX would cache ServedModel and CorpusIngest."""
  executors = raw_spec['deploymentSpec']['executors'].values()
  assert not any('resolver' in e or 'importer' in e for e in executors)
  tasks = raw_spec['root']['dag']['tasks']
  assert {tasks[name]['cachingOptions'].get('enableCache') for name in UNCACHED} == {True}
  assert 'defaultPipelineRoot' not in raw_spec


def test_without_warm_start_the_served_model_feeds_only_the_gate(raw_spec):
  spec = kubeflow_runner.postprocess(raw_spec, PIPELINE_ROOT)
  tasks = spec['root']['dag']['tasks']
  assert set(tasks) == set(EXPECTED_UPSTREAM)
  assert 'base_model' not in tasks['CharRnnTrainer']['inputs']['artifacts']
  assert 'ServedModel' not in tasks['CharRnnTrainer']['dependentTasks']
  baseline = tasks['EvaluationGate']['inputs']['artifacts']['baseline_model']
  assert baseline['taskOutputArtifact'] == {'producerTask': 'ServedModel',
                                            'outputArtifactKey': 'model'}
  assert tasks['ServedModel']['cachingOptions'] == {}


def test_warm_start_feeds_the_served_model_to_the_trainer(spec):
  base = spec['root']['dag']['tasks']['CharRnnTrainer']['inputs']['artifacts']['base_model']
  assert base['taskOutputArtifact'] == {'producerTask': 'ServedModel',
                                        'outputArtifactKey': 'model'}


def test_postprocess_leaves_the_raw_spec_alone_but_caching_and_the_root(raw_spec):
  import copy
  before = copy.deepcopy(raw_spec)
  spec = kubeflow_runner.postprocess(raw_spec, PIPELINE_ROOT)
  assert raw_spec == before
  for name in UNCACHED:
    before['root']['dag']['tasks'][name]['cachingOptions'] = {}
  before['defaultPipelineRoot'] = PIPELINE_ROOT
  assert spec == before


@pytest.mark.parametrize('task', sorted(UNCACHED))
def test_postprocess_refuses_a_spec_without_a_task_that_must_run_uncached(raw_spec, task):
  spec = kubeflow_runner.postprocess(raw_spec, PIPELINE_ROOT)
  del spec['root']['dag']['tasks'][task]
  with pytest.raises(ValueError, match=EXPECTED_EXECUTORS[task].rsplit('.', 2)[1]):
    kubeflow_runner.postprocess(spec, PIPELINE_ROOT)


def test_postprocess_refuses_resolver_executors_oss_kfp_cannot_run(raw_spec):
  import copy
  spec = copy.deepcopy(raw_spec)
  # What TFX compiles a Resolver node into (Vertex AI Pipelines only).
  spec['deploymentSpec']['executors']['resolver_executor'] = {
      'resolver': {'outputArtifactQueries': {}}}
  spec['components']['resolver'] = {'executorLabel': 'resolver_executor'}
  spec['root']['dag']['tasks']['resolver'] = {'componentRef': {'name': 'resolver'},
                                              'taskInfo': {'name': 'resolver'}}
  with pytest.raises(ValueError, match='resolver'):
    kubeflow_runner.postprocess(spec, PIPELINE_ROOT)


# ------------------------------------------------------- Trainer on a worker pool
VERTEX_PROJECT = 'test-project'
VERTEX_REGION = 'europe-west4'
MACHINE_TYPE = 'n1-standard-4'


@pytest.fixture(scope='module')
def pool_spec():
  """The spec with --trainer-workers=3: the Trainer launches a Vertex AI CustomJob."""
  pipeline = kubeflow_runner.build(
      preset_name='tiny', overrides='batch_size=30', corpus_sources=[CORPUS],
      pipeline_root=PIPELINE_ROOT, serving_model_dir=SERVING_DIR, beam_pipeline_args=BEAM_ARGS,
      warm_start=True, trainer_workers=3, image=IMAGE, vertex_project=VERTEX_PROJECT,
      vertex_region=VERTEX_REGION, trainer_machine_type=MACHINE_TYPE)
  return kubeflow_runner.postprocess(kubeflow_runner.compile_raw(pipeline, image=IMAGE),
                                     PIPELINE_ROOT)


def _trainer_custom_config(spec):
  import json
  return json.loads(spec['root']['dag']['tasks']['CharRnnTrainer']['inputs']['parameters'][
      'custom_config']['runtimeValue']['constant'])


def test_trainer_workers_compile_the_trainer_onto_a_vertex_worker_pool(pool_spec):
  from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_executor
  from tfx.utils import import_utils, name_utils
  from components import trainer, vertex_trainer
  # Only the Trainer's executor changes: TFX's Vertex launcher, ours inside.
  for name in pool_spec['root']['dag']['tasks']:
    expected = ('components.vertex_trainer.Executor' if name == 'CharRnnTrainer'
                else EXPECTED_EXECUTORS[name])
    assert kubeflow_runner.executor_class_path(pool_spec, name) == expected
  launcher = import_utils.import_class_by_path('components.vertex_trainer.Executor')
  assert issubclass(launcher, vertex_executor.GenericExecutor)
  worker = launcher()._GetExecutorClass()
  assert name_utils.get_full_name(worker) == 'components.vertex_trainer.WorkerExecutor'
  assert issubclass(worker, trainer.Executor)

  config = _trainer_custom_config(pool_spec)
  assert config['ai_platform_enable_vertex'] is True
  assert config['ai_platform_vertex_region'] == VERTEX_REGION
  args = config['ai_platform_training_args']
  assert args['project'] == VERTEX_PROJECT
  pools = args['job_spec']['worker_pool_specs']
  # Pool 0 is the chief (TF_CONFIG type 'chief'), pool 1 the other workers.
  assert [p['replica_count'] for p in pools] == [1, 2]
  for pool in pools:
    assert pool['container_spec'] == {'image_uri': IMAGE}
    assert pool['machine_spec'] == {'machine_type': MACHINE_TYPE}
  # The training settings are still all there, for run_fn on each worker.
  assert config['batch_size'] == 30
  # The Vertex executors' code is in the Trainer's cache key too.
  run_fn = configs.TRAINER_RUN_FN
  assert config['code_fingerprint'] == trainer.code_fingerprint(run_fn, vertex_trainer.__name__)
  assert config['code_fingerprint'] != trainer.code_fingerprint(run_fn)
  assert set(vertex_trainer.LAUNCHER_KEYS) >= {
      k for k in config if k.startswith('ai_platform_')}


def test_the_custom_job_runs_the_worker_executor_in_the_image_on_every_replica(pool_spec):
  """What TFX's launcher would submit (its own code, no request sent)."""
  import json
  from tfx.extensions.google_cloud_ai_platform import training_clients
  tasks = pool_spec['root']['dag']['tasks']
  config = _trainer_custom_config(pool_spec)
  exec_properties = {'custom_config': json.dumps(config),
                     'run_fn': tasks['CharRnnTrainer']['inputs']['parameters']['run_fn'][
                         'runtimeValue']['constant']}
  client = training_clients.VertexJobClient.__new__(training_clients.VertexJobClient)
  job = client.create_training_job({}, {}, exec_properties,
                                   'components.vertex_trainer.WorkerExecutor',
                                   dict(config['ai_platform_training_args']), None, None)
  pools = job['job_spec']['worker_pool_specs']
  assert [p['replica_count'] for p in pools] == [1, 2]
  # The request body the Vertex AI client builds from it (its own proto types):
  # a restarted replica restarts the whole job, which resumes from the step backups.
  from google.cloud import aiplatform_v1
  request = aiplatform_v1.CustomJob(job)
  assert request.job_spec.scheduling.restart_job_on_worker_restart is True
  assert [p.replica_count for p in request.job_spec.worker_pool_specs] == [1, 2]
  for pool in pools:
    command = pool['container_spec']['command']
    assert command[:5] == ['python', '-m', 'tfx.scripts.run_executor', '--executor_class_path',
                           'components.vertex_trainer.WorkerExecutor']
    assert pool['container_spec']['image_uri'] == IMAGE
    passed = json.loads(command[command.index('--exec-properties') + 1])
    assert passed['run_fn'] == configs.TRAINER_RUN_FN


def test_the_worker_executor_hands_run_fn_the_training_settings_without_the_launchers(tmp_path):
  import json
  from tfx.proto import trainer_pb2
  from tfx.types import standard_artifacts
  from tfx.utils import proto_utils
  from components import artifacts, vertex_trainer
  from components.training_config import TrainingConfig

  def artifact(cls, name, **kwargs):
    a = cls()
    a.uri = str(tmp_path / name)
    for key, value in kwargs.items():
      setattr(a, key, value)
    return a

  settings = configs.get_preset('tiny').training_config()
  launcher = vertex_trainer.custom_config(VERTEX_PROJECT, VERTEX_REGION, IMAGE, 2, MACHINE_TYPE)
  executor = vertex_trainer.WorkerExecutor()
  fn_args = executor._GetFnArgs(   # pylint: disable=protected-access
      {'examples': [artifact(standard_artifacts.Examples, 'examples',
                             split_names='["train", "eval"]')],
       'vocabulary': [artifact(artifacts.Vocabulary, 'vocabulary')]},
      {'model': [artifact(standard_artifacts.Model, 'model')],
       'model_run': [artifact(standard_artifacts.ModelRun, 'model_run')]},
      {'custom_config': json.dumps(dict(settings, **launcher)),
       'train_args': proto_utils.proto_to_json(trainer_pb2.TrainArgs(splits=['train'])),
       'eval_args': proto_utils.proto_to_json(trainer_pb2.EvalArgs(splits=['eval'])),
       'run_fn': configs.TRAINER_RUN_FN})
  assert not set(fn_args.custom_config) & set(launcher)
  assert fn_args.custom_config['vocabulary_uri'] == str(tmp_path / 'vocabulary')
  assert TrainingConfig.from_custom_config(fn_args.custom_config).to_custom_config() == settings


def test_a_worker_pool_needs_a_global_batch_that_divides_over_it():
  with pytest.raises(ValueError, match='batch_size=32 .* does not divide over 3 trainer workers'):
    kubeflow_runner.build(preset_name='tiny', overrides='', corpus_sources=[CORPUS],
                          pipeline_root=PIPELINE_ROOT, serving_model_dir=SERVING_DIR,
                          trainer_workers=3)
