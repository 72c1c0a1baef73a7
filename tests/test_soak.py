"""A short run of the soak benchmark (bench/soak) in the default suite.

20 s of mixed gRPC/REST traffic against `python -m serving.server` in its own
process, a new version published every 5 s, hostile requests and clients killed
mid-request: every well-formed request must succeed, every hostile one must get
its code, the newest version must serve at the end, the server must exit cleanly
on SIGTERM, and its RSS must not run away. The 10-minute figure is
`python -m bench.soak` (bench/README.md); speed is not asserted here.
"""

from bench.soak import run as soak
from tests.test_serving_helpers import MAX_GENERATE_CHARS, tiny_version_dir

# A 20 s run loads four versions (two stay loaded); the bound is for runaway growth
# (an unbounded queue, a leaked request buffer), not for the last few MiB.
RSS_GROWTH_BOUND_MIB = 300


def test_short_soak_answers_every_well_formed_request_and_refuses_hostile_ones(tmp_path):
  assert MAX_GENERATE_CHARS == soak.MAX_GENERATE_CHARS   # the hostile cases' limit
  # The serving tests' tiny model (made once per process) saves an export here.
  result = soak.main(['--duration=20', '--push-every=5', '--warmup=5',
                      f'--model-dir={tiny_version_dir()}', f'--out={tmp_path / "soak.json"}'])
  summary, final = result['summary'], result['final']
  assert summary['soak_errors'] == []
  assert summary['well_formed_failed'] == 0, result['failure_samples']
  kinds = {row['kind']: row['ok'] for row in result['requests']}
  for kind in ('grpc generate', 'grpc score', 'grpc stream (one_step)', 'rest generate',
               'rest score', 'grpc status', 'rest status'):
    assert kinds.get(kind, 0) > 0, f'no successful {kind} in 20 s: {kinds}'

  assert summary['hostile_sent'] >= len(soak.hostile_cases())
  wrong = {h['case']: h['got'] for h in result['hostile']
           if h['refused_as_expected'] != h['count']}
  assert not wrong, f'hostile requests not refused with their code: {wrong}'
  assert summary['hostile_leaky_messages'] == 0

  assert summary['abandoned'] > 0
  assert summary['versions_pushed'] >= 4
  assert final['server_alive_after_traffic'] and final['newest_pushed_serves']
  assert final['normal_generate_ok']
  assert final['server_exit_code'] == 0
  growth = result['memory']['growth_after_warmup_mib']
  assert growth is not None and growth < RSS_GROWTH_BOUND_MIB, result['memory']
