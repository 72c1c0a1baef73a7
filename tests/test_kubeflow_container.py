"""Compiled KFP tasks executed as a KFP pod runs them, compared with the local engine.

The spec from pipeline/kubeflow_runner.py is run task by task through TFX's
Kubeflow v2 container entrypoint (`python -m tfx.orchestration.kubeflow.v2.
container.kubeflow_v2_run_executor` with the spec's own args and an
ExecutorInput JSON; see tests/kfp_local_launcher.py), on the real corpus with a
local pipeline root. The artifacts must equal what LocalDagRunner produced for
the same corpus and preset (the session's `tiny_pipeline`).

Always: CorpusIngest -> VocabularyGen -> WindowGen (about a minute: each task is
a fresh Python with TensorFlow). With CHAR_RNN_SLOW_TESTS=1 also CharRnnTrainer
-> EvaluationGate -> Pusher, which push a servable model.
"""

import glob
import json
import os

import pytest

from pipeline import configs
from pipeline import kubeflow_runner
from tests import kfp_local_launcher as launcher

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')
DATA_TASKS = ['CorpusIngest', 'VocabularyGen', 'WindowGen']


@pytest.fixture(scope='module')
def kfp_run(tmp_path_factory, corpus_path):
  root = tmp_path_factory.mktemp('kfp_container')
  pipeline = kubeflow_runner.build(
      preset_name='tiny', overrides='', corpus_sources=[corpus_path],
      pipeline_root=str(root / 'pipeline_root'), serving_model_dir=str(root / 'serving_model'),
      beam_pipeline_args=configs.BEAM_PIPELINE_ARGS, warm_start=False)
  spec = kubeflow_runner.compile_pipeline(pipeline, str(root / 'char-rnn.yaml'), image='unused')
  env = dict(os.environ, PYTHONWARNINGS='ignore', TF_CPP_MIN_LOG_LEVEL='2')
  run_root = os.path.join(spec['defaultPipelineRoot'], 'run-1')
  produced = launcher.run_pipeline(spec, run_root, tasks=DATA_TASKS, env=env,
                                   cwd=str(root))   # not the repo: the installed package runs
  return {'spec': spec, 'root': root, 'run_root': run_root, 'env': env, 'produced': produced}


def _local_artifact(tiny_pipeline, type_name):
  """The (single) artifact of `type_name` the local engine recorded in ML Metadata."""
  from ml_metadata.metadata_store import metadata_store
  from ml_metadata.proto import metadata_store_pb2
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = tiny_pipeline.metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  artifacts = metadata_store.MetadataStore(config).get_artifacts_by_type(type_name)
  assert len(artifacts) == 1, f'{type_name}: {len(artifacts)} artifacts in the local run'
  return artifacts[0]


def _files(directory):
  out = {}
  for path in sorted(glob.glob(os.path.join(directory, '**', '*'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def _records(examples_uri, split):
  import tensorflow as tf
  files = sorted(glob.glob(os.path.join(examples_uri, f'Split-{split}', '*')))
  assert files, f'no files in {examples_uri}/Split-{split}'
  return sorted(r.numpy() for r in tf.data.TFRecordDataset(files, compression_type='GZIP'))


def test_corpus_ingest_through_the_kfp_entrypoint_equals_the_local_corpus(kfp_run, tiny_pipeline):
  kfp_corpus = kfp_run['produced']['CorpusIngest']['corpus']
  local = _local_artifact(tiny_pipeline, 'charrnn.Corpus')
  metadata = kfp_corpus['metadata']
  # KFP metadata is JSON: integers arrive as numbers, compared by value.
  assert metadata['num_chars'] == local.properties['num_chars'].int_value > 0
  assert metadata['num_shards'] == local.properties['num_shards'].int_value
  assert metadata['fingerprint'] == local.properties['fingerprint'].string_value
  assert metadata['sources'] == local.properties['sources'].string_value
  kfp_files, local_files = _files(kfp_corpus['uri']), _files(local.uri)
  assert set(kfp_files) == set(local_files) and 'index.json' in kfp_files
  assert kfp_files == local_files


def test_vocabulary_and_windows_through_the_kfp_entrypoint_equal_the_local_ones(
    kfp_run, tiny_pipeline):
  kfp_vocab = kfp_run['produced']['VocabularyGen']['vocabulary']
  local_vocab = _local_artifact(tiny_pipeline, 'charrnn.Vocabulary')
  assert kfp_vocab['metadata']['vocab_size'] == local_vocab.properties['vocab_size'].int_value
  assert kfp_vocab['metadata']['fingerprint'] == local_vocab.properties['fingerprint'].string_value
  assert _files(kfp_vocab['uri']) == _files(local_vocab.uri)

  kfp_examples = kfp_run['produced']['WindowGen']['examples']
  local_examples = _local_artifact(tiny_pipeline, 'Examples')
  assert json.loads(kfp_examples['metadata']['split_names']) == \
      json.loads(local_examples.properties['split_names'].string_value)
  for split in ('train', 'eval'):
    kfp_records = _records(kfp_examples['uri'], split)
    assert kfp_records and kfp_records == _records(local_examples.uri, split)


def test_the_kfp_entrypoint_records_the_corpus_under_the_task_output_uri(kfp_run):
  corpus = kfp_run['produced']['CorpusIngest']['corpus']
  assert corpus['uri'] == os.path.join(kfp_run['run_root'], 'CorpusIngest', 'corpus')
  with open(os.path.join(corpus['uri'], 'index.json')) as f:
    index = json.load(f)
  assert index['num_chars'] == corpus['metadata']['num_chars']
  assert index['fingerprint'] == corpus['metadata']['fingerprint']


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: trains, gates and pushes '
                                     'through the KFP entrypoint (minutes on 2 cores)')
def test_trainer_gate_and_pusher_through_the_kfp_entrypoint_push_a_servable_model(kfp_run):
  spec, produced = kfp_run['spec'], dict(kfp_run['produced'])
  for name in ['CharRnnTrainer', 'EvaluationGate', 'Pusher']:
    produced[name] = launcher.run_task(spec, name, kfp_run['run_root'], produced,
                                       env=kfp_run['env'], cwd=str(kfp_run['root']))
  model_uri = produced['CharRnnTrainer']['model']['uri']
  assert os.path.exists(os.path.join(model_uri, 'Format-Serving', 'saved_model.pb'))
  blessing = produced['EvaluationGate']['blessing']['metadata']
  pushed = produced['Pusher']['pushed_model']['metadata']
  assert pushed['pushed'] == blessing['blessed']
  if blessing['blessed']:
    destination = pushed['pushed_destination']
    assert destination.startswith(os.path.join(str(kfp_run['root']), 'serving_model', 'char_rnn'))
    assert os.path.exists(os.path.join(destination, 'saved_model.pb'))
