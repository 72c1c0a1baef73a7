"""configs.py: presets, overrides and environment variables are the only knobs."""

import dataclasses
import json
import os
import subprocess
import sys
import typing

import pytest

from components.training_config import TrainingConfig
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
  with pytest.raises(ValueError, match="rnn_type='transformer' is not allowed: rnn_type must "
                     "be one of 'gru', 'lstm'"):
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


def test_defaults_are_the_embedded_corpus_the_cpu_preset_and_outputs_in_the_project():
  env = {k: v for k, v in os.environ.items() if not k.startswith('CHAR_RNN_')}
  code = 'from pipeline import configs; print(configs.CORPUS_SOURCES[0], configs.PRESET_NAME, configs.OUTPUT_DIR)'
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == [configs.EMBEDDED_CORPUS, 'cpu',
                 os.path.join(configs.PROJECT_DIR, 'outputs')]
  assert configs.PIPELINE_NAME == 'char-rnn'   # KFP v2: [a-z0-9-] only


@pytest.mark.parametrize('override, message', [
    ('random_offsets=ture', "random_offsets='ture' is not a boolean: use one of true, 1, yes, "
                            'false, 0, no'),
    ('random_offsets=', "random_offsets='' is not a boolean"),
    ('epochs=0', 'epochs=0 is not allowed: epochs must be >= 1'),
    ('epochs=2.5', "epochs='2.5' is not an integer"),
    ('batch_size=0', 'batch_size=0 is not allowed: batch_size must be >= 1'),
    ('eval_fraction=1.5', r'eval_fraction=1.5 is not allowed: eval_fraction must be in '
                          r'\(0.0, 0.5\)'),
    ('eval_fraction=0', 'eval_fraction=0.0 is not allowed'),
    ('learning_rate=0', 'learning_rate=0.0 is not allowed: learning_rate must be > 0.0'),
    ('learning_rate=nan', 'learning_rate=nan is not a finite number'),
    ('seq_length=0', 'seq_length=0 is not allowed: seq_length must be >= 1'),
    ('rnn_units=0', 'rnn_units=0 is not allowed'),
    ('dropout=1', r'dropout=1.0 is not allowed: dropout must be in \[0.0, 1.0\)'),
    ('steps_per_epoch=0', r'steps_per_epoch=0 is not allowed: steps_per_epoch must be >= 1 '
                          r'\(or None\)'),
    ('precision=fp8', "precision='fp8' is not allowed: precision must be one of 'auto', "
                      "'float32', 'mixed_bfloat16', 'mixed_float16'"),
    ('lr_schedule=linear', "lr_schedule='linear' is not allowed: lr_schedule must be one of "
                           "'constant', 'cosine'"),
    ('serving_matmul_dtype=int8', "serving_matmul_dtype='int8' is not allowed"),
    ('unicode_normalization=NFX', "unicode_normalization='NFX' is not allowed"),
    ('max_eval_loss_ratio=0', 'max_eval_loss_ratio=0.0 is not allowed'),
    ('max_eval_loss=-1', 'max_eval_loss=-1.0 is not allowed'),
    ('regression_tolerance=-0.1', 'regression_tolerance=-0.1 is not allowed'),
    ('max_train_seconds=0', 'max_train_seconds=0.0 is not allowed'),
    ('divergence_loss_ratio=1', 'divergence_loss_ratio=1.0 is not allowed'),
    ('weight_decay=-0.1', r'weight_decay=-0.1 is not allowed: weight_decay must be >= 0.0'),
])
def test_bad_overrides_are_errors_that_name_the_field_and_the_allowed_values(override, message):
  with pytest.raises(ValueError, match=message):
    configs.get_preset('tiny', override)


def test_booleans_accept_only_the_usual_words():
  for word, value in (('true', True), ('TRUE', True), ('1', True), ('yes', True),
                      ('false', False), ('0', False), ('No', False)):
    assert configs.get_preset('tiny', f'random_offsets={word}').random_offsets is value
  assert configs.get_preset('tiny', 'max_eval_loss=1.5, max_train_seconds=none') == \
      dataclasses.replace(configs.PRESETS['tiny'], max_eval_loss=1.5)


def test_gate_thresholds_are_relative_to_the_unigram_entropy():
  thresholds = {name: (p.max_eval_loss_ratio, p.max_eval_loss)
                for name, p in configs.PRESETS.items()}
  assert thresholds == {'tiny': (1.26, None), 'cpu': (0.55, None), 'tutorial': (0.55, None)}
  assert configs.Preset().max_eval_loss_ratio == 1.0


def test_the_trainer_rebuilds_the_same_typed_object_and_nothing_else():
  for name in configs.PRESETS:
    preset = configs.get_preset(name, '')
    custom_config = json.loads(json.dumps(preset.training_config()))   # as TFX stores it
    config = TrainingConfig.from_custom_config(custom_config)
    assert config == TrainingConfig.from_settings(preset)
    for field in dataclasses.fields(TrainingConfig):
      assert getattr(config, field.name) == getattr(preset, field.name), field.name
  # The Preset declares each training field with TrainingConfig's own type.
  preset_types = typing.get_type_hints(configs.Preset)
  for name, hint in typing.get_type_hints(TrainingConfig).items():
    assert preset_types[name] == hint, name
  # No fallback defaults: a missing or unknown key is an error, not a guess.
  good = configs.get_preset('cpu', '').training_config()
  with pytest.raises(ValueError, match=r"missing \['precision'\]"):
    TrainingConfig.from_custom_config({k: v for k, v in good.items() if k != 'precision'})
  with pytest.raises(ValueError, match=r"unknown \['max_eval_loss'\]"):
    TrainingConfig.from_custom_config(dict(good, max_eval_loss=1.0))
  # Keys the executor adds at run time are not settings, and are allowed.
  TrainingConfig.from_custom_config(dict(good, vocabulary_uri='x', code_fingerprint='y',
                                         backup_dir='z', num_windows_train=3))
  # Values arriving through JSON are checked as well.
  with pytest.raises(ValueError, match='epochs=0 is not allowed'):
    TrainingConfig.from_custom_config(dict(good, epochs=0))
  with pytest.raises(ValueError, match="random_offsets='yes' has type str, not bool"):
    TrainingConfig.from_custom_config(dict(good, random_offsets='yes'))


def test_gate_settings_are_not_training_settings():
  """Changing a gate threshold must not retrain (the trainer's cache key is its config)."""
  tiny = configs.get_preset('tiny', '')
  assert 'max_eval_loss_ratio' not in tiny.training_config()
  assert configs.get_preset('tiny', 'max_eval_loss_ratio=0.9').training_config() == \
      tiny.training_config()
