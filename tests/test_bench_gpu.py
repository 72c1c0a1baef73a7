"""bench.gpu's three steps on this CPU (TensorFlow as Keras' backend; the device runs JAX):
the windows and settings it prepares, a `train` in a fresh process, and a `check` that
scores, exports and runs the export contract the way the pipeline would."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.gpu import __main__ as gpu
from components import examples_format
from pipeline import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tutorial preset, small enough for seconds on two cores.
OVERRIDES = 'embedding_dim=8, rnn_units=16, batch_size=8, epochs=2, max_generate_chars=300'


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  rng = np.random.default_rng(0)
  words = ['thou', 'art', 'my', 'lord', 'and', 'the', 'king', 'speak', 'hear', 'me']
  lines = [' '.join(rng.choice(words, 8)).capitalize() + '.' for _ in range(700)]
  path = tmp_path_factory.mktemp('corpus') / 'corpus.txt'
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return str(path)


@pytest.fixture(scope='module')
def prepared(corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('gpu-data'))
  settings = gpu.prepare(corpus, OVERRIDES, out, '3.12', wheels=False)
  return out, settings


def test_prepare_cuts_the_windows_windowgen_cuts_for_the_preset(prepared, corpus):
  out, settings = prepared
  preset = configs.get_preset('tutorial', OVERRIDES)
  assert settings['training'] == preset.training_config()
  data = np.load(os.path.join(out, gpu.DATA_FILE))
  with open(corpus, encoding='utf-8') as f:
    num_chars = len(f.read())
  boundary = examples_format.split_boundary(num_chars, preset.eval_fraction)
  window = preset.seq_length + 1
  assert preset.window_stride == window      # the tutorial's non-overlapping chunks
  assert len(data['train']) == examples_format.count_windows(0, boundary, window, window)
  assert len(data['eval']) == examples_format.count_windows(boundary, num_chars, window, window)
  tokens = settings['tokens']
  # Consecutive windows tile the text; the first eval window starts at the boundary.
  with open(corpus, encoding='utf-8') as f:
    text = f.read()
  assert ''.join(tokens[i] for i in data['train'][1]) == text[window:2 * window]
  assert ''.join(tokens[i] for i in data['eval'][0]) == text[boundary:boundary + window]


def test_a_model_trained_by_bench_gpu_scores_and_exports_as_the_pipeline_would(
    prepared, tmp_path):
  data_dir, settings = prepared
  run_dir = str(tmp_path / 'run')
  env = dict(os.environ, KERAS_BACKEND='tensorflow', PYTHONPATH=REPO)
  done = subprocess.run([sys.executable, '-m', 'bench.gpu', 'train', '--data', data_dir,
                         '--out', run_dir], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(run_dir, gpu.HISTORY_FILE)) as f:
    trained = json.load(f)
  assert len(trained['epoch_seconds']) == len(trained['history']['loss']) == 2
  assert trained['keras_backend'] == 'tensorflow' and trained['complete']

  export_dir = str(tmp_path / 'export')
  row = gpu.check(run_dir, data_dir, export_dir, str(tmp_path / 'result.json'))
  assert row['contract_passed'], row['contract']
  assert 'passed' in row['contract'] and 'failed' not in row['contract']
  # The exported model (the gate's `score`) and the Keras weights agree.
  assert row['eval_loss'] == pytest.approx(row['keras_eval_loss'], rel=1e-4)
  assert row['eval_loss'] < math.log(len(settings['tokens']))   # it learned something
  assert os.path.exists(os.path.join(export_dir, 'assets.extra', 'vocabulary.json'))
  with open(tmp_path / 'result.json') as f:
    assert json.load(f)['row']['eval_loss'] == row['eval_loss']
  # A second check never writes over an export.
  with pytest.raises(SystemExit, match='is not empty'):
    gpu.check(run_dir, data_dir, export_dir, str(tmp_path / 'again.json'))


def test_check_refuses_a_run_cut_short_before_its_weights(prepared, tmp_path):
  data_dir, settings = prepared
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / gpu.HISTORY_FILE).write_text(json.dumps(
      {'settings': settings, 'epoch_seconds': [12.5], 'complete': False}))
  with pytest.raises(SystemExit, match='training stopped after 1 of 2 epochs'):
    gpu.check(str(run_dir), data_dir, str(tmp_path / 'export'), str(tmp_path / 'r.json'))
  assert not (tmp_path / 'export').exists()
