"""pipeline/schedule.py against a real loopback HTTP server speaking KFP's
v2beta1 REST API (tests/kfp_api_server.py), through the real kfp 2.5 Client.

The spec is the real compiled pipeline (pipeline/kubeflow_runner.py).
"""

import json

import pytest
import yaml

from pipeline import kubeflow_runner
from pipeline import schedule
from tests.kfp_api_server import FakeKfpApi

CRON = '0 30 2 * * MON-FRI'


@pytest.fixture(scope='module')
def spec_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('schedule') / 'char-rnn.yaml')
  pipeline = kubeflow_runner.build(
      preset_name='tiny', corpus_sources=['gs://corpus-bucket/shakespeare.txt'],
      pipeline_root='gs://bucket/root', serving_model_dir='gs://bucket/serving',
      beam_pipeline_args=[], warm_start=True)
  kubeflow_runner.compile_pipeline(pipeline, path, image='example.com/char-rnn-tfx:1')
  return path


@pytest.fixture
def api():
  server = FakeKfpApi()
  server.url = server.serve()
  yield server
  server.close()


@pytest.fixture(autouse=True)
def _isolated_kfp_context(tmp_path, monkeypatch):
  # kfp.Client reads (and in multi-user mode writes) ~/.config/kfp/context.json.
  monkeypatch.setenv('HOME', str(tmp_path))


def _uploaded_spec(request):
  return yaml.safe_load(request.files['uploadfile'])


def _caching(spec):
  return {name: task.get('cachingOptions', {}).get('enableCache', False)
          for name, task in spec['root']['dag']['tasks'].items()}


def test_first_schedule_uploads_the_pipeline_and_creates_a_cron_run_on_its_version(
    api, spec_path):
  result = schedule.schedule(host=api.url, spec_path=spec_path, cron=CRON,
                             experiment='char-rnn', pipeline_root='gs://bucket/runtime-root')

  assert len(api.calls('GET', '/healthz')) == 1
  [upload] = api.calls('POST', '/pipelines/upload')
  assert upload.query['name'] == 'char-rnn'
  uploaded = _uploaded_spec(upload)
  assert set(uploaded['root']['dag']['tasks']) == {
      'CorpusIngest', 'VocabularyGen', 'WindowGen', 'ServedModel', 'CharRnnTrainer',
      'EvaluationGate', 'Pusher'}
  caching = _caching(uploaded)
  assert caching.pop('CorpusIngest') is False and caching.pop('ServedModel') is False
  assert caching and all(caching.values())

  [experiment] = api.calls('POST', '/experiments')
  assert experiment.body['display_name'] == 'char-rnn'
  [create] = api.calls('POST', '/recurringruns')
  body = create.body
  assert body['display_name'] == 'char-rnn-retraining'
  assert body['trigger'] == {'cron_schedule': {'cron': CRON}}
  assert int(body['max_concurrency']) == 1
  assert body['no_catchup'] is True and body['mode'] == 'ENABLE'
  assert body['experiment_id'] == result['experiment_id'] == experiment_id_of(api)
  assert body['pipeline_version_reference'] == {
      'pipeline_id': result['pipeline_id'], 'pipeline_version_id': result['pipeline_version_id']}
  assert api.versions[result['pipeline_version_id']]['pipeline_id'] == result['pipeline_id']
  assert body['runtime_config'] == {'pipeline_root': 'gs://bucket/runtime-root', 'parameters': {}}
  assert 'pipeline_spec' not in body     # the run references the uploaded version
  assert result['uncached_tasks'] == ['CorpusIngest', 'ServedModel']


def experiment_id_of(api):
  [experiment] = api.experiments.values()
  return experiment['experiment_id']


def test_rescheduling_uploads_a_new_version_and_replaces_the_recurring_run(api, spec_path):
  first = schedule.schedule(host=api.url, spec_path=spec_path, cron=CRON, experiment='char-rnn')
  second = schedule.schedule(host=api.url, spec_path=spec_path, cron='0 0 4 * * *',
                             experiment='char-rnn', version='char-rnn-v2')

  [upload_version] = api.calls('POST', '/pipelines/upload_version')
  assert upload_version.query == {'name': 'char-rnn-v2', 'pipelineid': first['pipeline_id'],
                                  'description': 'compiled spec char-rnn.yaml'}
  assert second['pipeline_id'] == first['pipeline_id']
  assert second['pipeline_version_id'] != first['pipeline_version_id']
  assert len(api.calls('POST', '/experiments')) == 1          # found, not created again
  assert second['replaced'] == [first['recurring_run_id']]
  assert [r.path for r in api.calls('DELETE', f'/recurringruns/{first["recurring_run_id"]}')]
  [remaining] = api.recurring_runs.values()
  assert remaining['recurring_run_id'] == second['recurring_run_id']
  assert remaining['trigger']['cron_schedule']['cron'] == '0 0 4 * * *'
  assert remaining['pipeline_version_reference']['pipeline_version_id'] == \
      second['pipeline_version_id']


@pytest.mark.parametrize('enable_caching', [True, False])
def test_caching_flag_sets_every_task_but_ingestion_and_the_served_model_which_never_cache(
    api, spec_path, enable_caching):
  schedule.schedule(host=api.url, spec_path=spec_path, cron=CRON, experiment='e',
                    enable_caching=enable_caching)
  caching = _caching(_uploaded_spec(api.calls('POST', '/pipelines/upload')[0]))
  assert caching.pop('CorpusIngest') is False and caching.pop('ServedModel') is False
  assert set(caching.values()) == {enable_caching}


def test_a_spec_compiled_without_served_model_is_refused_before_any_request(
    api, spec_path, tmp_path):
  # e.g. one compiled before ServedModel replaced the Resolver: it would run
  # without a baseline, or be rejected by KFP.
  with open(spec_path) as f:
    spec = yaml.safe_load(f)
  del spec['root']['dag']['tasks']['ServedModel']
  stale = tmp_path / 'stale.yaml'
  stale.write_text(yaml.safe_dump(spec))
  with pytest.raises(ValueError, match='components.served_model.Executor'):
    schedule.schedule(host=api.url, spec_path=str(stale), cron=CRON, experiment='e')
  assert api.requests == []


def test_declared_parameters_pass_through_typed_and_unknown_ones_fail_before_any_request(
    api, spec_path, tmp_path):
  # Our pipeline declares no runtime parameters; a spec that does (two added
  # to the real compiled one) shows how --param values travel.
  with open(spec_path) as f:
    spec = yaml.safe_load(f)
  spec['root']['inputDefinitions'] = {'parameters': {
      'epochs': {'parameterType': 'NUMBER_INTEGER'}, 'note': {'parameterType': 'STRING'}}}
  with_params = tmp_path / 'with-params.yaml'
  with_params.write_text(yaml.safe_dump(spec))

  with pytest.raises(ValueError, match='no such parameter'):
    schedule.schedule(host=api.url, spec_path=spec_path, cron=CRON, experiment='e',
                      params=['epochs=3'])
  assert api.requests == []

  schedule.schedule(host=api.url, spec_path=str(with_params), cron=CRON, experiment='e',
                    params=['epochs=3', 'note=a=b'])
  [create] = api.calls('POST', '/recurringruns')
  assert create.body['runtime_config']['parameters'] == {'epochs': 3, 'note': 'a=b'}


def test_namespace_reaches_the_upload_and_the_experiment(spec_path):
  api = FakeKfpApi(multi_user=True)
  url = api.serve()
  try:
    schedule.schedule(host=url, spec_path=spec_path, cron=CRON, experiment='e',
                      namespace='team-a')
  finally:
    api.close()
  assert api.calls('POST', '/pipelines/upload')[0].query['namespace'] == 'team-a'
  assert api.calls('POST', '/experiments')[0].body['namespace'] == 'team-a'
  assert api.calls('GET', '/experiments')[0].query['namespace'] == 'team-a'


@pytest.mark.parametrize('cron', [
    '0 0 3 * * *', '0 30 2 * * MON-FRI', '*/30 * * * * ?', '0 0 0 1,15 * ?',
    '0 0 12 ? JAN-MAR SUN', '0 0/15 8-18 * * 1-5'])
def test_kfp_six_field_cron_expressions_are_accepted(cron):
  assert schedule.validate_cron(cron) == cron


@pytest.mark.parametrize('cron, message', [
    ('0 3 * * *', '5 fields'),
    ('0 0 3 * *  * *', '7 fields'),
    ('60 0 3 * * *', 'second: 60 is outside 0-59'),
    ('0 0 24 * * *', 'hour: 24 is outside 0-23'),
    ('0 0 3 0 * *', 'day-of-month: 0 is outside 1-31'),
    ('0 0 3 * FOO *', 'month'),
    ('0 0 3 * * 7', 'day-of-week: 7 is outside 0-6'),
    ('0 */0 3 * * *', 'step'),
    ('0 0 5-3 * * *', 'backwards'),
    ('0 ? 3 * * *', 'minute'),
])
def test_malformed_cron_expressions_are_refused_with_the_reason(cron, message):
  with pytest.raises(schedule.CronError, match=message):
    schedule.validate_cron(cron)


def test_cli_refuses_a_five_field_cron_before_contacting_kfp(api, spec_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    schedule.main(['--host', api.url, '--pipeline-spec', spec_path, '--cron', '0 3 * * *'])
  assert exit_info.value.code == 2
  assert "did you mean '0 0 3 * * *'" in capsys.readouterr().err
  assert api.requests == []


def test_cli_schedules_and_prints_the_ids(api, spec_path, capsys):
  result = schedule.main(['--host', api.url, '--pipeline-spec', spec_path,
                          '--experiment', 'nightly', '--job-name', 'char-rnn-nightly',
                          '--cron', CRON, '--no-enable-caching'])
  out = capsys.readouterr().out     # the kfp client prints UI links first
  printed = json.loads(out[out.index('{\n'):])
  assert printed == result
  [run] = api.recurring_runs.values()
  assert run['recurring_run_id'] == printed['recurring_run_id']
  assert run['display_name'] == 'char-rnn-nightly'
  assert api.experiments[printed['experiment_id']]['display_name'] == 'nightly'
  caching = _caching(api.versions[printed['pipeline_version_id']]['pipeline_spec'])
  assert not any(caching.values())       # --no-enable-caching
