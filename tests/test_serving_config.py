"""The shipped TF Serving configuration parses with TF Serving's protos and is consistent.

serving/models.config, batching_parameters.txt, docker-compose.yml and k8s/ are
for the real tensorflow/serving image, which cannot run here; what can be
checked without it is checked: the text protos parse into the real messages,
the compose/k8s command lines use the real binary's flags (our server accepts
the same command line), and paths line up with the mounts.
"""

import os

import pytest
import yaml

from serving import protos
from serving.client import Client
from serving.models import ModelManager
from serving.server import build_arg_parser, limit_malloc_arenas
from tests.test_serving_helpers import REPO_DIR, push, serve

SERVING_DIR = os.path.join(REPO_DIR, 'serving')


def _compose():
  with open(os.path.join(SERVING_DIR, 'docker-compose.yml')) as f:
    return yaml.safe_load(f)['services']['tf-serving']


def test_models_config_is_a_valid_model_server_config_for_char_rnn():
  config = protos.parse_text(os.path.join(SERVING_DIR, 'models.config'), protos.ModelServerConfig)
  ModelManager.validate_config(config)
  (model,) = config.model_config_list.config
  assert (model.name, model.base_path, model.model_platform) == (
      'char_rnn', '/models/char_rnn', 'tensorflow')
  assert model.model_version_policy.latest.num_versions == 1


def test_batching_parameters_parse_and_allowed_sizes_end_at_max_batch_size():
  params = protos.parse_text(os.path.join(SERVING_DIR, 'batching_parameters.txt'),
                             protos.BatchingParameters)
  sizes = list(params.allowed_batch_sizes)
  assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value == 64
  assert params.num_batch_threads.value > 0 and params.batch_timeout_micros.value > 0


def test_compose_runs_the_official_2_16_1_image_on_the_mounted_config_and_models():
  service = _compose()
  assert service['image'] == 'tensorflow/serving:2.16.1'
  assert {'8500:8500', '8501:8501'} <= set(service['ports'])
  mounts = dict(reversed(v.removesuffix(':ro').rsplit(':', 1)) for v in service['volumes'])
  assert mounts['/config/models.config'] == './models.config'
  assert '/models' in mounts                      # base_path /models/char_rnn lives here
  flags = dict(arg.split('=', 1) for arg in service['command'])
  assert flags['--model_config_file'] == '/config/models.config'


def test_k8s_manifest_mounts_models_and_config_and_probes_the_rest_api():
  with open(os.path.join(SERVING_DIR, 'k8s', 'tf-serving.yaml')) as f:
    deployment, service = list(yaml.safe_load_all(f))
  container = deployment['spec']['template']['spec']['containers'][0]
  assert container['image'] == 'tensorflow/serving:2.16.1'
  assert {m['mountPath'] for m in container['volumeMounts']} == {'/models', '/config'}
  assert container['readinessProbe']['httpGet']['path'] == '/v1/models/char_rnn'
  assert {p['port'] for p in service['spec']['ports']} == {8500, 8501}


@pytest.mark.parametrize('args', [
    lambda: _compose()['command'],
    lambda: ['--port=8500', '--rest_api_port=8501', '--model_name=char_rnn',
             '--model_base_path=/models/char_rnn'],     # the image's entrypoint / make serve
])
def test_our_server_accepts_the_real_binarys_command_lines(args):
  parsed = build_arg_parser().parse_args(args())
  assert parsed.port == 8500 or parsed.model_config_file


def test_shipped_models_config_serves_once_base_path_points_at_a_push(tmp_path):
  config = protos.parse_text(os.path.join(SERVING_DIR, 'models.config'), protos.ModelServerConfig)
  base = str(tmp_path / 'char_rnn')
  push(base, 7)
  config.model_config_list.config[0].base_path = base
  with serve(config, rest_port=None) as server:
    with Client(f'127.0.0.1:{server.grpc_port}') as c:
      assert c.metadata().version == 7


def test_defaults_are_safe_loopback_reload_off_and_every_flag_documented(capsys):
  args = build_arg_parser().parse_args(['--model_base_path=/m'])
  assert args.host == '127.0.0.1'
  assert not args.enable_reload_config and not args.allow_plaintext_rest_with_tls
  assert (args.max_num_load_retries, args.load_retry_interval_micros) == (5, 60_000_000)
  parser = build_arg_parser()
  undocumented = [a.option_strings for a in parser._actions
                  if a.option_strings != ['-h', '--help'] and not a.help]
  assert undocumented == []
  with pytest.raises(SystemExit):
    parser.parse_args(['--help'])
  text = capsys.readouterr().out
  for flag in ('--max_request_bytes', '--max_batch_rows', '--max_string_bytes',
               '--max_request_work', '--max_concurrent_predicts', '--max_queued_predicts',
               '--enable_reload_config', '--reload_config_allowed_roots',
               '--allow_plaintext_rest_with_tls', '--rest_body_timeout_seconds'):
    assert flag in text


def test_malloc_arenas_are_capped_by_default_and_zero_leaves_glibcs_default():
  assert build_arg_parser().parse_args([]).malloc_arena_max == 2
  assert limit_malloc_arenas(0) is False          # nothing asked of glibc
  assert limit_malloc_arenas(2) is True           # glibc (this image's libc) took it


def test_reload_is_refused_unless_enabled(tmp_path):
  import grpc
  from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
  base = str(tmp_path / 'char_rnn')
  push(base, 1)
  with serve(base_path=base, rest_port=None) as server:
    stub = model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(f'127.0.0.1:{server.grpc_port}'))
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name='char_rnn', base_path=base)
    with pytest.raises(grpc.RpcError) as e:
      stub.HandleReloadConfigRequest(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert '--enable_reload_config' in e.value.details()
