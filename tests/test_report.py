"""The run report and the one-line failure, on real runs.

* The session's real tiny pipeline run -> pipeline.report writes report.html and
  plots.png whose figures are the run's own (ML Metadata, evaluation.json,
  metrics.json), and its CLI prints the report and TensorBoard paths.
* `make tensorboard` (pipeline/tensorboard_logs.py) loads TensorBoard in this
  environment; with CHAR_RNN_SLOW_TESTS=1 it serves the run's logs over loopback.
* A real run on a corpus that does not exist ends with exactly one plain line
  naming the component and the error; the traceback is only in the log file the
  line names; the report of that failed run says where it stopped.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from pipeline import configs, report, runs
from tests.conftest import REPO_DIR

SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')


@pytest.fixture(scope='module')
def tiny_report(tiny_pipeline, tmp_path_factory):
  root = str(tmp_path_factory.mktemp('reports'))
  return report.write_report(tiny_pipeline.metadata_path, root), tiny_pipeline


def test_report_shows_the_runs_own_figures(tiny_report):
  path, pipeline_run = tiny_report
  run = runs.read_run(runs.open_store(pipeline_run.metadata_path))
  assert os.path.dirname(path).endswith(re.sub(r'[^\w.-]', '-', run.run_id))
  with open(path, encoding='utf-8') as f:
    page = f.read()
  evaluation = run.evaluation()
  assert evaluation['eval_loss'] > 0
  assert f'{evaluation["eval_loss"]:,.4f} nats/char' in page
  assert ('BLESSED' in page) and ('NOT BLESSED' not in page) == evaluation['blessed']
  assert str(run.pushed_version()) in page
  assert '1,115,394' in page                                    # corpus size
  assert run.corpus()['fingerprint'] in page
  assert f'{len(run.vocabulary())} symbols' in page and len(run.vocabulary()) > 60
  metrics = run.metrics()
  assert f'<td>steps</td><td>{metrics["train_steps"]:,}</td>' in page
  # tiny has no size by step time: the report says its size was set, and why.
  assert metrics['rnn_units_reason'] == 'rnn_units as set (size by step time is off)'
  assert f'<td>model size</td><td>{metrics["rnn_units_reason"]}</td>' in page
  for component in ('CorpusIngest', 'VocabularyGen', 'WindowGen', 'ServedModel',
                    'CharRnnTrainer', 'EvaluationGate', 'Pusher'):
    assert f'<td>{component}</td>' in page
  history = run.history()
  assert history['epochs'] and all('loss' in e for e in history['epochs'] if 'sample' not in e)
  assert any(e.get('sample', '').startswith('ROMEO:') for e in history['epochs'])   # per epoch
  assert 'ROMEO:' in page
  assert '<img src="plots.png"' in page


def test_plots_png_is_a_real_image(tiny_report):
  import matplotlib.image
  path, _ = tiny_report
  image = matplotlib.image.imread(os.path.join(os.path.dirname(path), report.PLOTS_FILE))
  height, width = image.shape[:2]
  assert width >= 1000 and height >= 500
  assert image.std() > 0.05   # drawn on, not a blank canvas


def test_report_cli_prints_paths(tiny_pipeline, capsys):
  logdir = subprocess.run(
      [sys.executable, '-m', 'pipeline.report', f'--output-dir={tiny_pipeline.output_dir}',
       '--logdir'], cwd=REPO_DIR, check=True, capture_output=True, text=True,
      timeout=300).stdout.strip()
  assert logdir.startswith(tiny_pipeline.pipeline_root)
  assert os.path.isdir(os.path.join(logdir, 'train'))   # Keras' TensorBoard logs
  assert report.main([f'--output-dir={tiny_pipeline.output_dir}', '--path']) == 0
  path = capsys.readouterr().out.strip()
  assert path.startswith(report.reports_dir(tiny_pipeline.output_dir))
  assert os.path.isfile(path) and os.path.isfile(os.path.join(os.path.dirname(path), 'plots.png'))


def test_failed_run_ends_in_one_plain_line(tmp_path, capfd):
  from pipeline import local_runner
  missing = str(tmp_path / 'no-such-corpus.txt')
  output_dir = str(tmp_path / 'outputs')
  assert local_runner.main(output_dir, corpus_sources=[missing], preset_name='tiny',
                           overrides='') == 1
  out, err = capfd.readouterr()
  last = err.strip().splitlines()[-1]
  match = re.fullmatch(r'CorpusIngest failed: CorpusError: (.*) \(traceback in (.*\.log)\)', last)
  assert match, last
  assert missing in match.group(1)
  assert 'Traceback' not in err and 'Traceback' not in out
  with open(match.group(2), encoding='utf-8') as f:
    log = f.read()
  assert 'Traceback (most recent call last)' in log and 'CorpusError' in log
  assert 'Execution' in log   # TFX's own log lines are in the file too

  # The failed run's report says how far it got.
  path = report.write_report(configs.metadata_path(output_dir), str(tmp_path / 'reports'))
  with open(path, encoding='utf-8') as f:
    page = f.read()
  assert 'failed</span> in CorpusIngest' in page
  assert 'The gate did not run.' in page

  # A pipeline that cannot even be built, in the same directory: not blamed on
  # the earlier run's CorpusIngest.
  assert local_runner.main(output_dir, preset_name='no-such-preset') == 1
  last = capfd.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("The pipeline failed: ValueError: Unknown preset 'no-such-preset'")


def test_report_of_nothing_is_a_clear_error(tmp_path):
  with pytest.raises(runs.NoRunsError, match='no pipeline has run there yet'):
    report.write_report(configs.metadata_path(str(tmp_path)), str(tmp_path / 'r'))
  assert not os.path.exists(tmp_path / 'r')


def test_tensorboard_loads_its_plugins_in_this_environment():
  """TensorBoard 2.16 needs pkg_resources: the locked setuptools (< 81) still ships it."""
  from tensorboard import default
  names = {getattr(p, 'plugin_name', '') for p in default.get_plugins()}
  assert {'scalars', 'text'} <= names


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: starts a real TensorBoard')
def test_tensorboard_serves_the_runs_logs(tiny_pipeline):
  """`make tensorboard`: the real TensorBoard, on loopback, over the run's ModelRun."""
  from tests import server_process
  port = server_process.free_port()
  process = subprocess.Popen(
      [sys.executable, '-m', 'pipeline.tensorboard_logs',
       f'--output-dir={tiny_pipeline.output_dir}', f'--port={port}'],
      cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    server_process.wait_for(
        lambda: _get_or_none(f'http://127.0.0.1:{port}/data/runs') is not None,
        'TensorBoard to answer', timeout=180, process=process)
    assert {'train', 'validation'} <= set(_get_or_none(f'http://127.0.0.1:{port}/data/runs'))
    tags = _get_or_none(f'http://127.0.0.1:{port}/data/plugin/scalars/tags')
    assert 'epoch_loss' in tags['train']
  finally:
    process.terminate()
    process.wait(timeout=30)


def _get_or_none(url):
  from tests import server_process
  try:
    return server_process.get_json(url, timeout=5)
  except (OSError, ValueError):
    return None
