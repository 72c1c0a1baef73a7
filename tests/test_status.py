"""Status and rollback end to end: real pipeline runs, a real server, real version moves.

The session's tiny pipeline run is copied (ML Metadata, artifacts, pushed version)
into this module's own output directory, and a second real run (another seed, so
another model) pushes a newer version there. Then:
  * `pipeline.status` lists both runs and says the newer version is served;
  * `pipeline.rollback --version=<older>` makes a running `python -m serving.server`
    serve the older version (the newer one unloads), and status says so;
  * `--undo` brings the newer one back, on disk and in the server;
  * after a second rollback, the next pipeline run's gate compares against the
    rolled-back version (ServedModel picks it as the baseline).
Error paths (unknown version, the newest one, an unfinished push, nothing to
undo) are checked on plain version directories: they must move nothing.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline import configs, rollback, runs, status
from tests import server_process
from tests.conftest import REPO_DIR, run_local_pipeline


@pytest.fixture(scope='module')
def two_runs(tiny_pipeline, corpus_path, tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('status') / 'outputs')
  # The session's run, as if it had run here (its artifact URIs still point into
  # the session's directory, which outlives this module).
  shutil.copytree(tiny_pipeline.output_dir, output_dir)
  base = rollback.model_base(output_dir)
  first = rollback.served_version(base)
  assert first is not None
  run_local_pipeline(output_dir, [corpus_path], overrides='seed=1')
  second = rollback.served_version(base)
  assert second is not None and second > first, 'the second run pushed no newer version'
  return {'output_dir': output_dir, 'base': base, 'first': first, 'second': second}


def _status_cli(output_dir: str) -> str:
  return subprocess.run(
      [sys.executable, '-m', 'pipeline.status', f'--output-dir={output_dir}'], cwd=REPO_DIR,
      check=True, capture_output=True, text=True, timeout=300).stdout


def test_status_lists_both_runs_and_the_served_version(two_runs):
  found = status.collect(two_runs['output_dir'])
  assert len(found['runs']) == 2
  first, second = found['runs']
  assert first['pushed_version'] == two_runs['first']
  assert second['pushed_version'] == two_runs['second']
  for row in (first, second):
    assert row['state'] == 'complete'
    assert row['corpus_chars'] == 1_115_394 and len(row['corpus_fingerprint']) == 64
    assert row['steps'] == 20 and row['eval_loss'] > 0
    assert row['blessed'] is True and row['gate'] == 'blessed'
  assert first['corpus_fingerprint'] == second['corpus_fingerprint']
  assert first['preset'] == 'tiny' and second['preset'] == 'tiny seed=1'
  assert first['baseline_version'] is None           # nothing was served before it
  assert second['baseline_version'] == two_runs['first']
  assert found['served_version'] == two_runs['second']
  assert [v['version'] for v in found['versions'] if v['served']] == [two_runs['second']]

  text = _status_cli(two_runs['output_dir'])
  assert first['run_id'] in text and second['run_id'] in text
  assert f'Served now: {two_runs["second"]}' in text
  assert 'NOT blessed' not in text


def test_rollback_switches_a_running_server_and_undo_restores(two_runs):
  base, first, second = two_runs['base'], two_runs['first'], two_runs['second']
  with server_process.server(base) as (url, process):
    server_process.wait_for(lambda: server_process.available_versions(url) == {second},
                            f'the server to serve {second}', process=process)

    assert rollback.main([f'--output-dir={two_runs["output_dir"]}', f'--version={first}']) == 0
    assert rollback.served_version(base) == first
    assert os.path.isfile(os.path.join(rollback.aside_dir(base), str(second), 'saved_model.pb'))
    server_process.wait_for(lambda: server_process.available_versions(url) == {first},
                            f'the server to switch to {first}', process=process)
    metadata = server_process.get_json(f'{url}/v1/models/char_rnn/metadata')
    assert int(metadata['model_spec']['version']) == first
    found = status.collect(two_runs['output_dir'])
    assert found['served_version'] == first
    assert found['rollback']['version'] == first and found['rollback']['moved'] == [second]
    assert {v['version']: v['where'] for v in found['versions']} == {
        first: 'serving', second: 'rolled back'}
    log = rollback.read_log(base)
    assert log[-1]['action'] == 'rollback' and log[-1]['moved'] == [second]

    assert rollback.main([f'--output-dir={two_runs["output_dir"]}', '--undo']) == 0
    assert rollback.served_version(base) == second
    assert not os.listdir(rollback.aside_dir(base))
    server_process.wait_for(lambda: server_process.available_versions(url) == {second},
                            f'the server to return to {second}', process=process)
    assert status.collect(two_runs['output_dir'])['rollback'] is None
    assert rollback.read_log(base)[-1]['action'] == 'undo'


def test_next_run_uses_the_rolled_back_version_as_baseline(two_runs, corpus_path):
  base, first = two_runs['base'], two_runs['first']
  rollback.rollback(base, first)
  try:
    run_local_pipeline(two_runs['output_dir'], [corpus_path], overrides='seed=1')
    latest = runs.read_runs(configs.metadata_path(two_runs['output_dir']))[-1]
    assert latest.baseline_version() == first
    evaluation = latest.evaluation()
    assert evaluation.get('baseline_eval_loss') is not None
    assert latest.artifact('ServedModel', 'model')['properties']['served_from'] == \
        os.path.join(base, str(first))
  finally:
    rollback.undo(base)


def _versions(tmp_path, *numbers, incomplete=()):
  base = tmp_path / 'char_rnn'
  for n in numbers:
    (base / str(n)).mkdir(parents=True)
    if n not in incomplete:
      (base / str(n) / 'saved_model.pb').write_bytes(b'')
  return str(base)


def test_rollback_refuses_what_it_cannot_do_and_moves_nothing(tmp_path):
  base = _versions(tmp_path, 10, 20, 30, incomplete=(30,))
  before = sorted(os.listdir(base))
  with pytest.raises(rollback.RollbackError, match='no version 15 under .*10, 20, 30'):
    rollback.rollback(base, 15)
  with pytest.raises(rollback.RollbackError, match=r'\[30\] .* still being copied'):
    rollback.rollback(base, 10)
  with pytest.raises(rollback.RollbackError, match='incomplete'):
    rollback.rollback(base, 30)
  with pytest.raises(rollback.RollbackError, match='no rollback to undo'):
    rollback.undo(base)
  assert sorted(os.listdir(base)) == before
  assert not os.path.exists(rollback.aside_dir(base))
  assert not os.path.exists(rollback.log_path(base))

  base = _versions(tmp_path / 'b', 10, 20)
  with pytest.raises(rollback.RollbackError, match='already the newest'):
    rollback.rollback(base, 20)
  entry = rollback.rollback(base, 10)
  assert entry['moved'] == [20] and rollback.served_version(base) == 10
  with pytest.raises(rollback.RollbackError, match='itself rolled back'):
    rollback.rollback(base, 20)
  rollback.undo(base)
  assert rollback.served_version(base) == 20
  with pytest.raises(rollback.RollbackError, match='no rollback to undo'):
    rollback.undo(base)
  with open(rollback.log_path(base)) as f:
    assert [e['action'] for e in json.load(f)] == ['rollback', 'undo']


def test_rollback_cli_says_what_is_wrong(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'pipeline.rollback', f'--output-dir={tmp_path}', '--version=5'],
      cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith('rollback: no version 5 under ')
