"""Compiled KFP tasks executed as a KFP pod runs them, compared with the local engine.

The spec from pipeline/kubeflow_runner.py (warm start on, as scheduled
retraining compiles it) is run task by task through TFX's Kubeflow v2
container entrypoint (`python -m tfx.orchestration.kubeflow.v2.container.
kubeflow_v2_run_executor` with the spec's own args and an ExecutorInput JSON;
see tests/kfp_local_launcher.py), on the real corpus with a local pipeline root
and serving directory. The artifacts must equal what LocalDagRunner produced
for the same corpus and preset (the session's `tiny_pipeline`).

Always: CorpusIngest (a Beam component, with the spec's Beam arguments) and
ServedModel with nothing served yet (each task is a fresh Python with
TensorFlow, 10-20 s). With CHAR_RNN_SLOW_TESTS=1 also VocabularyGen ->
WindowGen on that corpus, and two scheduled runs' worth of CharRnnTrainer ->
EvaluationGate -> Pusher: the first pushes a servable model, the second
snapshots it with ServedModel, warm-starts from it and is gated against it.
"""

import glob
import json
import os

import pytest

from components import pusher
from pipeline import configs
from pipeline import kubeflow_runner
from tests import kfp_local_launcher as launcher

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')
DATA_TASKS = (['CorpusIngest', 'VocabularyGen', 'WindowGen', 'ServedModel'] if SLOW else
              ['CorpusIngest', 'ServedModel'])


@pytest.fixture(scope='module')
def kfp_run(tmp_path_factory, corpus_path):
  root = tmp_path_factory.mktemp('kfp_container')
  pipeline = kubeflow_runner.build(
      preset_name='tiny', overrides='', corpus_sources=[corpus_path],
      pipeline_root=str(root / 'pipeline_root'), serving_model_dir=str(root / 'serving_model'),
      beam_pipeline_args=configs.BEAM_PIPELINE_ARGS, warm_start=True)
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
  # The entrypoint writes custom properties (ours and TFX's tfx_version; the
  # local engine adds is_external) as KFP metadata under their own names; JSON
  # has no integers, so they arrive as floats, compared by value.
  assert {'num_chars', 'num_shards', 'fingerprint', 'sources'} <= \
      set(metadata) & set(local.custom_properties)
  assert isinstance(metadata['num_chars'], float)
  assert metadata['num_chars'] == local.custom_properties['num_chars'].int_value > 0
  assert metadata['num_shards'] == local.custom_properties['num_shards'].int_value
  assert metadata['fingerprint'] == local.custom_properties['fingerprint'].string_value
  assert metadata['sources'] == local.custom_properties['sources'].string_value
  assert not local.properties
  kfp_files, local_files = _files(kfp_corpus['uri']), _files(local.uri)
  assert set(kfp_files) == set(local_files) and 'index.json' in kfp_files
  assert kfp_files == local_files


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: two more tasks through the '
                                     'KFP entrypoint (about 40 s)')
def test_vocabulary_and_windows_through_the_kfp_entrypoint_equal_the_local_ones(
    kfp_run, tiny_pipeline):
  kfp_vocab = kfp_run['produced']['VocabularyGen']['vocabulary']
  local_vocab = _local_artifact(tiny_pipeline, 'charrnn.Vocabulary')
  assert {'vocab_size', 'fingerprint'} <= \
      set(kfp_vocab['metadata']) & set(local_vocab.custom_properties)
  assert kfp_vocab['metadata']['vocab_size'] == \
      local_vocab.custom_properties['vocab_size'].int_value
  assert kfp_vocab['metadata']['fingerprint'] == \
      local_vocab.custom_properties['fingerprint'].string_value
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


def test_served_model_with_nothing_served_yields_an_empty_baseline(kfp_run, tiny_pipeline):
  from components import served_model
  from tfx.types import standard_artifacts
  served = kfp_run['produced']['ServedModel']['model']
  assert served['uri'] == os.path.join(kfp_run['run_root'], 'ServedModel', 'model')
  assert served['metadata']['served_version'] == 0.0 and 'served_from' not in served['metadata']
  assert _files(served['uri']) == {}
  model = standard_artifacts.Model()
  model.uri = served['uri']
  assert served_model.is_empty(model)
  # What the local engine's first run recorded for the same situation.
  from ml_metadata.metadata_store import metadata_store
  from ml_metadata.proto import metadata_store_pb2
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = tiny_pipeline.metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  store = metadata_store.MetadataStore(config)
  first_served = min((a for a in store.get_artifacts_by_type('Model')
                      if 'served_version' in a.custom_properties), key=lambda a: a.id)
  assert first_served.custom_properties['served_version'].int_value == \
      served['metadata']['served_version']


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _scheduled_run(kfp_run, run_root, upstream):
  """ServedModel -> Trainer -> EvaluationGate -> Pusher of one run, on `upstream`'s data."""
  spec, produced = kfp_run['spec'], dict(upstream)
  for name in ['ServedModel', 'CharRnnTrainer', 'EvaluationGate', 'Pusher']:
    produced[name] = launcher.run_task(spec, name, run_root, produced,
                                       env=kfp_run['env'], cwd=str(kfp_run['root']))
  return produced


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: trains, gates and pushes '
                                     'twice through the KFP entrypoint (minutes on 2 cores)')
def test_two_scheduled_runs_push_then_warm_start_and_gate_against_the_served_model(kfp_run):
  serving = os.path.join(str(kfp_run['root']), 'serving_model', 'char_rnn')
  data = {name: kfp_run['produced'][name] for name in DATA_TASKS if name != 'ServedModel'}

  # Run 1: nothing served, so the Trainer starts from scratch and the gate
  # judges on its absolute threshold only.
  first = _scheduled_run(kfp_run, kfp_run['run_root'], data)
  assert first['ServedModel']['model']['metadata']['served_version'] == 0.0
  model_uri = first['CharRnnTrainer']['model']['uri']
  assert os.path.exists(os.path.join(model_uri, 'Format-Serving', 'saved_model.pb'))
  metrics = _read_json(os.path.join(model_uri, 'Format-Serving', 'assets.extra', 'metrics.json'))
  assert metrics['start'].startswith('from scratch'), metrics['start']
  blessing = first['EvaluationGate']['blessing']
  evaluation = _read_json(os.path.join(blessing['uri'], 'evaluation.json'))
  assert 'baseline_eval_loss' not in evaluation and 'baseline_model' not in blessing['metadata']
  # tiny preset: 1.26 x the eval text's unigram entropy (3.34 nats/char) = 4.2
  assert blessing['metadata']['blessed'] == 1.0, evaluation['reasons']
  pushed = first['Pusher']['pushed_model']['metadata']
  assert pushed['pushed'] == 1.0
  destination = pushed['pushed_destination']
  assert os.path.dirname(destination) == serving
  assert os.path.exists(os.path.join(destination, 'saved_model.pb'))

  # Run 2 (the corpus tasks as if cached): ServedModel snapshots run 1's push,
  # the Trainer continues from its weights, the gate compares against it.
  second = _scheduled_run(kfp_run, os.path.join(os.path.dirname(kfp_run['run_root']), 'run-2'),
                          data)
  served = second['ServedModel']['model']
  assert served['metadata']['served_version'] == float(os.path.basename(destination))
  assert os.path.normpath(served['metadata']['served_from']) == os.path.normpath(destination)
  assert os.path.exists(os.path.join(served['uri'], 'Format-Serving', 'saved_model.pb'))
  model_uri = second['CharRnnTrainer']['model']['uri']
  metrics = _read_json(os.path.join(model_uri, 'Format-Serving', 'assets.extra', 'metrics.json'))
  assert metrics['start'].startswith('warm-started from ' + served['uri']), metrics['start']
  blessing = second['EvaluationGate']['blessing']
  evaluation = _read_json(os.path.join(blessing['uri'], 'evaluation.json'))
  assert blessing['metadata']['baseline_model'] == served['uri']
  assert evaluation['baseline_model'] == served['uri']
  regressed = evaluation['eval_loss'] > (evaluation['baseline_eval_loss'] +
                                         evaluation['regression_tolerance'])
  thresholds = [t for t in (evaluation['ratio_threshold'], evaluation['max_eval_loss']) if t]
  assert thresholds   # the ratio, at least
  assert bool(blessing['metadata']['blessed']) == (
      not regressed and all(evaluation['eval_loss'] <= t for t in thresholds))
  pushed = second['Pusher']['pushed_model']['metadata']
  assert pushed['pushed'] == blessing['metadata']['blessed']
  # components.pusher's atomic push: only version directories, no temporary ones left.
  assert all(pusher.is_version_name(v) for v in os.listdir(serving)), os.listdir(serving)
  assert len(os.listdir(serving)) == (2 if pushed['pushed'] else 1)
