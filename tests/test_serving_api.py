"""Every signature through both APIs, every error with its code, pinning, TLS, the CLI.

One in-process serving.server over loopback (real gRPC and HTTP servers on
127.0.0.1, ephemeral ports) serves two copies of a tiny real SavedModel, with a
`specific {1, 2}` policy and labels stable=1, canary=2. Clients are the real
serving.client library and raw tensorflow_serving.apis stubs; nothing is mocked.
"""

import http.client
import json
import math
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import cli
from serving import client as client_lib
from serving import protos
from serving.client import Client
from serving.server import ModelServer
from tests.test_serving_helpers import (MAX_GENERATE_CHARS, STATE_SIZE, corpus_chars,
                                        free_port, make_tls_material, push, serve)


def _config(base: str) -> model_server_config_pb2.ModelServerConfig:
  return text_format.Parse(f'''
      model_config_list {{ config {{
        name: "char_rnn" base_path: "{base}" model_platform: "tensorflow"
        model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
        version_labels {{ key: "stable" value: 1 }}
        version_labels {{ key: "canary" value: 2 }}
      }} }}''', model_server_config_pb2.ModelServerConfig())


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  base = str(tmp_path_factory.mktemp('models') / 'char_rnn')
  push(base, 1)
  push(base, 2)
  with serve(_config(base)) as s:
    yield s


@pytest.fixture(scope='module')
def target(server):
  return f'127.0.0.1:{server.grpc_port}'


@pytest.fixture
def client(target):
  with Client(target, timeout=30) as c:
    yield c


@pytest.fixture(scope='module')
def stub(target):
  channel = grpc.insecure_channel(target)
  yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
  channel.close()


def rest(server, method, path, body=None):
  """(HTTP status, JSON) for one REST call."""
  url = f'http://127.0.0.1:{server.rest_port}{path}'
  data = json.dumps(body).encode() if body is not None else None
  request = urllib.request.Request(url, data=data, method=method)
  try:
    with urllib.request.urlopen(request, timeout=30) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def generate_request(signature='generate', **overrides):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'char_rnn'
  request.model_spec.signature_name = signature
  inputs = {'prompt': tf.make_tensor_proto(['ROMEO:']),
            'num_chars': tf.make_tensor_proto(5, tf.int32),
            'temperature': tf.make_tensor_proto(1.0, tf.float32),
            'seed': tf.make_tensor_proto(1, tf.int64)}
  inputs.update(overrides)
  for k, v in inputs.items():
    if v is not None:
      request.inputs[k].CopyFrom(v)
  return request


# ------------------------------------------------------------------ gRPC, happy paths
def test_generate_returns_one_continuation_per_prompt_from_the_latest_version(client):
  result = client.predict('generate', {
      'prompt': (['ROMEO:', 'JULIET:', ''], tf.string), 'num_chars': (40, tf.int32),
      'temperature': (1.0, tf.float32), 'seed': (3, tf.int64)})
  assert result.model_version == 2 and result.signature_name == 'generate'
  texts = [t.decode() for t in result.outputs['text']]
  assert [len(t) for t in texts] == [40, 40, 40]
  assert set(''.join(texts)) <= set(corpus_chars())
  assert result.outputs['states'].shape == (3, STATE_SIZE)


def test_generate_is_reproducible_with_a_seed_and_greedy_at_temperature_zero(client):
  a = client.generate(['ROMEO:'], 60, temperature=1.0, seed=11)
  assert a == client.generate(['ROMEO:'], 60, temperature=1.0, seed=11)
  assert a != client.generate(['ROMEO:'], 60, temperature=1.0, seed=12)
  assert client.generate('ROMEO:', 30, 0.0, seed=1) == client.generate('ROMEO:', 30, 0.0, seed=2)


def test_empty_signature_name_serves_serving_default_and_the_response_says_so(stub):
  response = stub.Predict(generate_request(signature=''), timeout=30)
  assert response.model_spec.signature_name == 'serving_default'
  assert response.model_spec.version.value == 2
  assert len(tf.make_ndarray(response.outputs['text'])[0].decode()) == 5


def test_stream_round_trips_one_step_and_matches_generate_when_greedy(client):
  chars = list(client.stream('ROMEO:', num_chars=25, temperature=0.0))
  assert all(len(c) == 1 for c in chars) and len(chars) == 25
  assert ''.join(chars) == client.generate('ROMEO:', 25, temperature=0.0)[0]


def test_one_step_returns_chars_states_and_logits_for_a_batch(client):
  result = client.predict('one_step', {
      'inputs': (['ROMEO:', 'a'], tf.string),
      'states': (np.zeros([2, STATE_SIZE], np.float32), tf.float32),
      'temperature': (0.5, tf.float32)})
  assert result.signature_name == 'one_step'
  assert result.outputs['states'].shape == (2, STATE_SIZE)
  assert result.outputs['logits'].shape == (2, len(corpus_chars()) + 1)
  assert all(c.decode() in corpus_chars() for c in result.outputs['chars'])


def test_score_reports_log_likelihood_bits_per_char_and_perplexity(client):
  scores = client.score(['ROMEO: What say you?', 'x', ''])
  s = scores[0]
  assert s.num_scored == len('ROMEO: What say you?') - 1
  assert s.log_likelihood < 0
  assert s.bits_per_char == pytest.approx(-s.log_likelihood / s.num_scored / math.log(2))
  assert s.perplexity == pytest.approx(math.exp(-s.log_likelihood / s.num_scored))
  assert (scores[1].num_scored, scores[1].log_likelihood) == (0, 0.0)
  assert scores[2].num_scored == 0


def test_metadata_lists_the_signatures_and_the_state_size(client):
  info = client.metadata()
  assert (info.name, info.version) == ('char_rnn', 2)
  assert set(info.signatures) == {'generate', 'one_step', 'score', 'serving_default'}
  assert info.state_size == STATE_SIZE
  assert info.signatures['generate']['inputs']['num_chars'].dtype == tf.int32
  assert info.signatures['generate']['inputs']['num_chars'].shape == []


def test_status_reports_every_served_version_available(client):
  statuses = client.status()
  assert [(s.version, s.state, s.error_code) for s in statuses] == [
      (2, 'AVAILABLE', 'OK'), (1, 'AVAILABLE', 'OK')]


def test_a_pinned_version_or_label_is_the_version_that_answers(target):
  for kwargs, version in [({'version': 1}, 1), ({'label': 'stable'}, 1),
                          ({'label': 'canary'}, 2), ({}, 2)]:
    with Client(target, **kwargs) as c:
      assert c.predict('score', {'text': (['abc'], tf.string)}).model_version == version
      assert c.metadata().version == version


# ------------------------------------------------------------------ REST
def test_rest_status_and_metadata_have_tf_servings_json_shape(server):
  status, body = rest(server, 'GET', '/v1/models/char_rnn')
  assert status == 200
  assert body['model_version_status'][0] == {
      'version': '2', 'state': 'AVAILABLE', 'status': {'error_code': 'OK', 'error_message': ''}}
  status, body = rest(server, 'GET', '/v1/models/char_rnn/versions/1')
  assert status == 200 and [v['version'] for v in body['model_version_status']] == ['1']
  status, body = rest(server, 'GET', '/v1/models/char_rnn/labels/stable/metadata')
  assert status == 200 and body['model_spec']['version'] == '1'
  signatures = body['metadata']['signature_def']['signature_def']
  assert set(signatures) == {'generate', 'one_step', 'score', 'serving_default'}
  assert signatures['generate']['inputs']['prompt']['dtype'] == 'DT_STRING'


def test_rest_row_format_score_matches_grpc(server, client):
  status, body = rest(server, 'POST', '/v1/models/char_rnn:predict', {
      'signature_name': 'score', 'instances': ['ROMEO: hi', {'b64': 'YWJj'}]})
  assert status == 200
  grpc_scores = client.score(['ROMEO: hi', 'abc'])
  assert [p['num_scored'] for p in body['predictions']] == [s.num_scored for s in grpc_scores]
  assert [p['log_likelihood'] for p in body['predictions']] == pytest.approx(
      [s.log_likelihood for s in grpc_scores], rel=1e-6)
  # Named instances (objects) are the same request.
  status, named = rest(server, 'POST', '/v1/models/char_rnn:predict', {
      'signature_name': 'score', 'instances': [{'text': 'ROMEO: hi'}, {'text': 'abc'}]})
  assert status == 200 and named == body


def test_rest_columnar_generate_and_one_step_match_grpc(server, client):
  status, body = rest(server, 'POST', '/v1/models/char_rnn/versions/2:predict', {
      'inputs': {'prompt': ['ROMEO:'], 'num_chars': 50, 'temperature': 0.8, 'seed': 5}})
  assert status == 200
  assert body['outputs']['text'] == client.generate(['ROMEO:'], 50, 0.8, seed=5)
  assert np.array(body['outputs']['states']).shape == (1, STATE_SIZE)
  status, body = rest(server, 'POST', '/v1/models/char_rnn/labels/canary:predict', {
      'signature_name': 'one_step',
      'inputs': {'inputs': ['ROMEO:'], 'states': [[0.0] * STATE_SIZE], 'temperature': 0.0}})
  assert status == 200
  assert body['outputs']['chars'] == [client.generate('ROMEO:', 1, 0.0)[0]]


# ------------------------------------------------------------------ errors, gRPC
def _proto(value, dtype=None):
  return tf.make_tensor_proto(value, dtype)


GRPC_ERRORS = [
    ('unknown model', dict(model='nope'), grpc.StatusCode.NOT_FOUND,
     'Servable not found for request: Latest(nope)'),
    ('unknown version', dict(version=7), grpc.StatusCode.NOT_FOUND,
     'Servable not found for request: Specific(char_rnn, 7)'),
    ('unknown label', dict(label='beta'), grpc.StatusCode.INVALID_ARGUMENT,
     'Unrecognized servable version label: beta'),
    ('unknown signature', dict(signature='classify'), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "classify" not found.'),
    ('missing input', dict(inputs=dict(seed=None)), grpc.StatusCode.INVALID_ARGUMENT,
     'input size does not match signature: 3!=4 len({num_chars,prompt,temperature}) != '
     'len({num_chars,prompt,seed,temperature}). Sent extra: {}. Missing but required: {seed}.'),
    ('extra input', dict(inputs=dict(top_k=_proto(5))), grpc.StatusCode.INVALID_ARGUMENT,
     'Sent extra: {top_k}. Missing but required: {}.'),
    ('wrong dtype', dict(inputs=dict(temperature=_proto('hot'))), grpc.StatusCode.INVALID_ARGUMENT,
     'to be float but string is provided'),
    ('wrong shape', dict(inputs=dict(num_chars=_proto([5, 6], tf.int32))),
     grpc.StatusCode.INVALID_ARGUMENT, 'input "num_chars" must have shape []'),
    ('rank-0 prompt', dict(inputs=dict(prompt=_proto('ROMEO:'))), grpc.StatusCode.INVALID_ARGUMENT,
     'input "prompt" must have shape [?]'),
    ('too many chars', dict(inputs=dict(num_chars=_proto(MAX_GENERATE_CHARS + 1, tf.int32))),
     grpc.StatusCode.INVALID_ARGUMENT, f'num_chars must be <= {MAX_GENERATE_CHARS}'),
    ('negative temperature', dict(inputs=dict(temperature=_proto(-1.0, tf.float32))),
     grpc.StatusCode.INVALID_ARGUMENT, 'temperature must be >= 0'),
    ('bad output filter', dict(output_filter=['nope']), grpc.StatusCode.INVALID_ARGUMENT,
     'output tensor alias not found in signature: nope'),
]


@pytest.mark.parametrize('case,change,code,message', GRPC_ERRORS, ids=[c[0] for c in GRPC_ERRORS])
def test_grpc_predict_errors_have_tf_servings_codes_and_messages(stub, case, change, code, message):
  request = generate_request(**change.get('inputs', {}))
  if 'model' in change:
    request.model_spec.name = change['model']
  if 'version' in change:
    request.model_spec.version.value = change['version']
  if 'label' in change:
    request.model_spec.version_label = change['label']
  if 'signature' in change:
    request.model_spec.signature_name = change['signature']
  request.output_filter.extend(change.get('output_filter', []))
  with pytest.raises(grpc.RpcError) as e:
    stub.Predict(request, timeout=30)
  assert e.value.code() == code
  assert message in e.value.details()
  assert '[[{{' not in e.value.details()   # no graph-node noise


def test_client_raises_typed_errors(target, client):
  with pytest.raises(client_lib.NotFoundError):
    Client(target, 'nope').generate('x', 1)
  with pytest.raises(client_lib.InvalidArgumentError, match='temperature must be >= 0'):
    client.generate('x', 1, temperature=-0.5)
  with pytest.raises(client_lib.FailedPreconditionError):
    client.predict('nope', {})
  with pytest.raises(client_lib.DeadlineExceededError):
    client.generate(['ROMEO:'] * 8, MAX_GENERATE_CHARS, timeout=0.05)


def test_requests_without_model_spec_or_metadata_field_are_invalid(stub):
  with pytest.raises(grpc.RpcError) as e:
    stub.Predict(predict_pb2.PredictRequest(), timeout=10)
  assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                 'Missing ModelSpec')
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = 'char_rnn'
  with pytest.raises(grpc.RpcError) as e:
    stub.GetModelMetadata(request, timeout=10)
  assert e.value.details() == 'GetModelMetadataRequest must specify at least one metadata_field'
  request.metadata_field.append('graph')
  with pytest.raises(grpc.RpcError) as e:
    stub.GetModelMetadata(request, timeout=10)
  assert e.value.details() == 'Metadata field graph is not supported'


def test_malformed_tensor_is_invalid_argument_and_the_server_keeps_serving(stub, client):
  bad = tf.make_tensor_proto(np.zeros([4], np.float32))
  bad.tensor_content = b'\x00' * 3   # 3 bytes cannot hold 4 floats
  request = generate_request(temperature=bad)
  with pytest.raises(grpc.RpcError) as e:
    stub.Predict(request, timeout=10)
  assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert len(client.generate('ROMEO:', 3)[0]) == 3


def test_classify_regress_and_multi_inference_are_unimplemented(stub):
  calls = [(stub.Classify, classification_pb2.ClassificationRequest()),
           (stub.Regress, regression_pb2.RegressionRequest()),
           (stub.MultiInference, inference_pb2.MultiInferenceRequest())]
  for method, request in calls:
    with pytest.raises(grpc.RpcError) as e:
      method(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert 'use Predict' in e.value.details()


def test_model_status_errors(target):
  stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(target))
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = 'nope'
  with pytest.raises(grpc.RpcError) as e:
    stub.GetModelStatus(request, timeout=10)
  assert (e.value.code(), e.value.details()) == (
      grpc.StatusCode.NOT_FOUND, 'Could not find any versions of model nope')
  request.model_spec.name = 'char_rnn'
  request.model_spec.version.value = 9
  with pytest.raises(grpc.RpcError) as e:
    stub.GetModelStatus(request, timeout=10)
  assert (e.value.code(), e.value.details()) == (
      grpc.StatusCode.NOT_FOUND, 'Could not find version 9 of model char_rnn')


# ------------------------------------------------------------------ errors, REST
REST_ERRORS = [
    ('POST', '/v1/models/nope:predict', {'instances': ['a']}, 404, 'Latest(nope)'),
    ('POST', '/v1/models/char_rnn/versions/9:predict', {'instances': ['a']}, 404,
     'Specific(char_rnn, 9)'),
    ('POST', '/v1/models/char_rnn/labels/beta:predict', {'instances': ['a']}, 400,
     'Unrecognized servable version label: beta'),
    ('POST', '/v1/models/char_rnn:predict', {'signature_name': 'nope', 'instances': ['a']}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ('POST', '/v1/models/char_rnn:predict', {'signature_name': 7, 'instances': ['a']}, 400,
     "'signature_name' key must be a string value."),
    ('POST', '/v1/models/char_rnn:predict', {'signature_name': 'score'}, 400,
     "Missing 'inputs' or 'instances' key"),
    ('POST', '/v1/models/char_rnn:predict', {'inputs': {'prompt': ['a'], 'num_chars': 1,
                                                        'temperature': 1.0}}, 400,
     'Missing but required: {seed}'),
    ('POST', '/v1/models/char_rnn:predict', {'inputs': {'prompt': ['a'], 'num_chars': 'x',
                                                        'temperature': 1.0, 'seed': 1}}, 400,
     'Expecting numeric values for input "num_chars"'),
    ('POST', '/v1/models/char_rnn:predict', {'inputs': {'prompt': ['a'], 'num_chars': 20000,
                                                        'temperature': 1.0, 'seed': 1}}, 400,
     'num_chars must be <= 10000'),
    ('POST', '/v1/models/char_rnn:predict', {'instances': [
        {'prompt': 'a', 'num_chars': 1, 'temperature': 1.0, 'seed': 1}]}, 400,
     'input "num_chars" must have shape []'),
    ('POST', '/v1/models/char_rnn:classify', {'examples': []}, 501, 'use :predict'),
    ('GET', '/v1/models/nope', None, 404, 'Could not find any versions of model nope'),
    ('GET', '/v1/models/char_rnn/versions/abc', None, 400, 'Malformed request'),
]


@pytest.mark.parametrize('method,path,body,http_code,message', REST_ERRORS,
                         ids=[f'{m} {p} {i}' for i, (m, p, *_ ) in enumerate(REST_ERRORS)])
def test_rest_errors_are_error_json_with_tf_servings_http_codes(server, method, path, body,
                                                                http_code, message):
  status, payload = rest(server, method, path, body)
  assert status == http_code
  assert set(payload) == {'error'} and message in payload['error']


def test_rest_rejects_malformed_json_with_400(server):
  request = urllib.request.Request(f'http://127.0.0.1:{server.rest_port}/v1/models/char_rnn:predict',
                                   data=b'{"instances": [', method='POST')
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(request, timeout=10)
  assert e.value.code == 400 and 'JSON Parse error' in json.loads(e.value.read())['error']


# ------------------------------------------------------------------ ModelService reload
def test_reload_config_adds_and_removes_models_before_answering(tmp_path):
  first, second = str(tmp_path / 'a'), str(tmp_path / 'b')
  push(first, 1)
  push(second, 5)
  with serve(base_path=first, reload_roots=[str(tmp_path)]) as s, \
      Client(f'127.0.0.1:{s.grpc_port}', 'other') as other:
    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f'127.0.0.1:{s.grpc_port}'))
    request = model_management_pb2.ReloadConfigRequest()
    for name, base in (('char_rnn', first), ('other', second)):
      request.config.model_config_list.config.add(name=name, base_path=base,
                                                   model_platform='tensorflow')
    response = models.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    assert other.metadata().version == 5     # loaded by the time the reload answered
    del request.config.model_config_list.config[0]
    models.HandleReloadConfigRequest(request, timeout=60)
    with pytest.raises(client_lib.NotFoundError):
      Client(f'127.0.0.1:{s.grpc_port}').generate('x', 1)
    bad = model_management_pb2.ReloadConfigRequest()
    bad.config.model_config_list.config.add(name='x', base_path=first)
    bad.config.model_config_list.config.add(name='x', base_path=second)
    with pytest.raises(grpc.RpcError) as e:
      models.HandleReloadConfigRequest(bad, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'Illegal to list model x multiple times' in e.value.details()
    assert other.metadata().version == 5     # a rejected config changes nothing


# ------------------------------------------------------------------ transport
def test_unavailable_is_retried_with_backoff_until_the_server_comes_up(tmp_path):
  base = str(tmp_path / 'char_rnn')
  push(base, 3)
  port = free_port()
  started = []

  def start_later():
    from serving.models import single_model_config
    started.append(ModelServer(single_model_config('char_rnn', base), grpc_port=port,
                               rest_port=None, host='127.0.0.1', poll_seconds=0).start())

  timer = threading.Timer(1.0, start_later)
  timer.start()
  try:
    with Client(f'127.0.0.1:{port}', retries=10, backoff=0.2, max_backoff=1.0) as c:
      assert c.metadata().version == 3
  finally:
    timer.join()
    for s in started:
      s.stop(0)


def test_without_retries_an_absent_server_is_unavailable_error():
  with Client(f'127.0.0.1:{free_port()}', retries=0, timeout=5) as c:
    with pytest.raises(client_lib.UnavailableError):
      c.status()


def test_mutual_tls_round_trip_with_an_ssl_config_file(tmp_path):
  base = str(tmp_path / 'char_rnn')
  push(base, 1)
  pem = make_tls_material(str(tmp_path))
  ssl_file = tmp_path / 'ssl.config'
  ssl_file.write_text(text_format.MessageToString(protos.SSLConfig(
      server_key=pem['server.key'].decode(), server_cert=pem['server.pem'].decode(),
      custom_ca=pem['ca.pem'].decode(), client_verify=True)))
  ssl_config = protos.parse_text(str(ssl_file), protos.SSLConfig)
  with serve(base_path=base, ssl_config=ssl_config) as s:
    target = f'localhost:{s.grpc_port}'
    # REST serves TLS with the same certificate and the same client check.
    import ssl
    context = ssl.create_default_context(cafile=str(tmp_path / 'ca.pem'))
    context.load_cert_chain(str(tmp_path / 'client.pem'), str(tmp_path / 'client.key'))
    with urllib.request.urlopen(f'https://localhost:{s.rest_port}/v1/models/char_rnn',
                                context=context, timeout=30) as r:
      assert json.loads(r.read())['model_version_status'][0]['state'] == 'AVAILABLE'
    no_client_cert = ssl.create_default_context(cafile=str(tmp_path / 'ca.pem'))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
      urllib.request.urlopen(f'https://localhost:{s.rest_port}/v1/models/char_rnn',
                             context=no_client_cert, timeout=30).read()
    with pytest.raises((urllib.error.URLError, ConnectionResetError, http.client.HTTPException)):
      urllib.request.urlopen(f'http://localhost:{s.rest_port}/v1/models/char_rnn',
                             timeout=30).read()   # plaintext to the TLS port
    with Client(target, root_certificates=pem['ca.pem'], private_key=pem['client.key'],
                certificate_chain=pem['client.pem']) as c:
      assert len(c.generate('ROMEO:', 10)[0]) == 10
    # The CLI reads the same material from files.
    args = ['status', f'--target={target}', f'--root-cert={tmp_path / "ca.pem"}',
            f'--client-cert={tmp_path / "client.pem"}', f'--client-key={tmp_path / "client.key"}']
    assert cli.main(args) == 0
    with Client(target, root_certificates=pem['ca.pem'], retries=0, timeout=5) as c:
      with pytest.raises(client_lib.ServingError):   # no client certificate
        c.status()
    with Client(target, retries=0, timeout=5) as c:
      with pytest.raises(client_lib.UnavailableError):   # plaintext to a TLS port
        c.status()


# ------------------------------------------------------------------ CLI
def test_cli_generate_prints_prompt_and_continuation(target, capsys):
  assert cli.main(['generate', f'--target={target}', '--prompt=ROMEO:',
                          '--num-chars=80', '--seed=4']) == 0
  out = capsys.readouterr().out
  assert out.startswith('ROMEO:') and len(out.rstrip('\n')) >= len('ROMEO:') + 70


def test_cli_stream_score_metadata_and_status(target, capsys):
  assert cli.main(['stream', f'--target={target}', '--num-chars=15']) == 0
  assert capsys.readouterr().out.startswith('ROMEO:')
  assert cli.main(['score', f'--target={target}', '--text=To be, or not to be']) == 0
  assert 'bits/char' in capsys.readouterr().out
  assert cli.main(['metadata', f'--target={target}']) == 0
  assert 'state size 16' in capsys.readouterr().out
  assert cli.main(['status', f'--target={target}', '--label=stable']) == 0
  assert 'version 1: AVAILABLE' in capsys.readouterr().out


def test_cli_errors_are_one_line_with_a_hint_and_no_traceback(target, capsys):
  assert cli.main(['generate', f'--target={target}', '--model=nope']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: NOT_FOUND: Servable not found for request: Latest(nope)')
  assert 'hint:' in err and 'Traceback' not in err
  assert cli.main(['generate', f'--target={target}', '--temperature=-1']) == 1
  assert capsys.readouterr().err.startswith('error: INVALID_ARGUMENT:')
  assert cli.main(['status', f'--target=127.0.0.1:{free_port()}', '--retries=0']) == 1
  assert 'error: UNAVAILABLE' in capsys.readouterr().err


def test_rest_mounts_the_playground_beside_the_api(server):
  pytest.importorskip('serving.playground')
  with urllib.request.urlopen(f'http://127.0.0.1:{server.rest_port}/playground/', timeout=30) as r:
    assert r.status == 200 and b'<html' in r.read().lower()
  status, body = rest(server, 'GET', '/nope')
  assert status == 404 and body == {'error': 'Not found: /nope'}
  status, body = rest(server, 'PUT', '/v1/models/char_rnn:predict', {})
  assert status == 405 and 'Method PUT is not allowed' in body['error']


def test_a_served_generate_is_the_signature_run_uncut_bit_for_bit(server, client):
  """Admission, limits and the cancellable run change nothing in an uncut result."""
  from tensorflow_serving.apis import model_pb2
  servable = server.manager.servable(model_pb2.ModelSpec(name='char_rnn'))
  direct = servable.function('generate')(
      prompt=tf.constant(['ROMEO:', 'JULIET:']), num_chars=tf.constant(300),
      temperature=tf.constant(0.9), seed=tf.constant(7, tf.int64))
  served = client.predict('generate', {
      'prompt': (['ROMEO:', 'JULIET:'], tf.string), 'num_chars': (300, tf.int32),
      'temperature': (0.9, tf.float32), 'seed': (7, tf.int64)})
  assert list(served.outputs['text']) == list(direct['text'].numpy())
  np.testing.assert_array_equal(served.outputs['states'], direct['states'].numpy())
