"""configs.py: presets, overrides and environment variables are the only knobs."""

import importlib
import os
import subprocess
import sys

import pytest

from pipeline import configs


def test_presets_are_valid_and_the_tutorial_one_is_the_tutorials_model():
  for name in configs.PRESETS:
    assert configs.get_preset(name, '') is not None
  t = configs.get_preset('tutorial', '')
  assert (t.embedding_dim, t.rnn_type, t.rnn_units, t.num_layers, t.batch_size,
          t.learning_rate, t.epochs, t.seq_length, t.window_stride) == (
              256, 'gru', 1024, 1, 64, 1e-3, 20, 100, 101)


def test_overrides_are_typed_and_unknown_fields_are_rejected():
  p = configs.get_preset('tiny', 'epochs=3, learning_rate=0.5, rnn_type=lstm, steps_per_epoch=None')
  assert (p.epochs, p.learning_rate, p.rnn_type, p.steps_per_epoch) == (3, 0.5, 'lstm', None)
  with pytest.raises(ValueError, match='not <field>=<value>'):
    configs.get_preset('tiny', 'epoch=3')
  with pytest.raises(ValueError, match='rnn_type must be one of'):
    configs.get_preset('tiny', 'rnn_type=transformer')
  with pytest.raises(ValueError, match="Unknown preset 'huge'"):
    configs.get_preset('huge', '')
  assert configs.get_preset('tiny', 'seed=None').seed is None


def test_random_offsets_need_windows_that_tile_the_text():
  p = configs.get_preset('tiny', 'random_offsets=1, seed=7')
  assert (p.random_offsets, p.seed) == (True, 7)
  with pytest.raises(ValueError, match='random_offsets re-cuts windows that tile the text: '
                     'it needs stride == seq_length \\(100\\), not 101'):
    configs.get_preset('tutorial', 'random_offsets=true')


def test_environment_variables_choose_corpus_preset_and_output_dir(tmp_path):
  code = ('from pipeline import configs; '
          'print(configs.CORPUS_SOURCES, configs.PRESET_NAME, configs.OUTPUT_DIR, '
          'configs.metadata_path(), configs.serving_model_dir(), sep="|")')
  env = dict(os.environ, CHAR_RNN_CORPUS='a.txt, gs://b/*.txt', CHAR_RNN_PRESET='tiny',
             CHAR_RNN_OUTPUT_DIR=str(tmp_path))
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.strip().split('|')
  assert out == ["['a.txt', 'gs://b/*.txt']", 'tiny', str(tmp_path),
                 str(tmp_path / 'metadata' / 'char-rnn' / 'metadata.db'),
                 str(tmp_path / 'serving_model')]


def test_defaults_are_the_tutorial_url_the_cpu_preset_and_outputs_in_the_project():
  env = {k: v for k, v in os.environ.items() if not k.startswith('CHAR_RNN_')}
  code = 'from pipeline import configs; print(configs.CORPUS_SOURCES[0], configs.PRESET_NAME, configs.OUTPUT_DIR)'
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == [configs.TUTORIAL_CORPUS_URL, 'cpu',
                 os.path.join(configs.PROJECT_DIR, 'outputs')]
  assert configs.PIPELINE_NAME == 'char-rnn'   # KFP v2: [a-z0-9-] only
