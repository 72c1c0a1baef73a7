"""Size by step time: under a time budget, the largest layer that still buys enough steps."""

import json
import math

import pytest

from components import trainer_module, training
from components.text import CharVocab
from components.training_config import ConfigError, TrainingConfig
from pipeline import configs
from tests.test_trainer_module import _base_model_dir
from tests.test_training_faults import _metrics, _run_fn_args, _run_fn_here


def _cost(units, emb=64, vocab=66):
  return training.step_cost(units, 'gru', 1, emb, vocab)


def test_the_ladder_goes_down_in_steps_of_64_to_the_smallest():
  assert training.size_ladder(384, 256) == [384, 320, 256]
  assert training.size_ladder(100, 30) == [100, 36, 30]
  assert training.size_ladder(384, None) == [384]
  assert training.size_ladder(384, 384) == [384]


def test_step_cost_predicts_the_measured_ratios_between_gru_sizes():
  # Measured on Zen 3 (bench/quality/explore.py, interleaved): 320 and 256 units
  # take 0.72 and 0.55 of GRU-384's step.
  assert _cost(320) / _cost(384) == pytest.approx(0.72, abs=0.01)
  assert _cost(256) / _cost(384) == pytest.approx(0.49, abs=0.01)
  assert training.step_cost(256, 'lstm', 1, 64, 66) > _cost(256)
  assert training.step_cost(256, 'gru', 2, 64, 66) > _cost(256)


def test_the_largest_size_stays_when_the_budget_buys_enough_steps():
  choice = training.choose_size([384, 320, 256], 250.0, 300.0, 800, _cost)
  assert choice.rnn_units == 384
  assert choice.reason == ('384 units measured 250 ms/step: the 300 s left buy ~1200 steps, '
                           'at least min_budget_steps=800, so 384 units')
  assert choice.step_ms[384] == 250.0
  assert choice.step_ms[256] == pytest.approx(250.0 * _cost(256) / _cost(384), abs=0.01)


def test_a_slow_machine_trains_the_largest_size_predicted_to_buy_enough_steps():
  # 550 ms/step (Zen 3, float32): 384 buys ~545 steps, 320 ~757, 256 ~1120.
  choice = training.choose_size([384, 320, 256], 550.0, 300.0, 800, _cost)
  assert choice.rnn_units == 256
  assert 'fewer than min_budget_steps=800; 256 units' in choice.reason
  assert training.choose_size([384, 320, 256], 550.0, 300.0, 700, _cost).rnn_units == 320
  # No size buys enough: the smallest, and the reason says so.
  slowest = training.choose_size([384, 320, 256], 5000.0, 300.0, 800, _cost)
  assert slowest.rnn_units == 256 and 'no size down to 256 buys enough' in slowest.reason
  for bad in (float('nan'), 0.0, -1.0, math.inf):
    with pytest.raises(ValueError, match='is not a duration'):
      training.choose_size([384, 256], bad, 300.0, 800, _cost)


def test_min_rnn_units_above_rnn_units_is_refused_by_name():
  with pytest.raises(ConfigError, match=r'min_rnn_units=512 is not allowed: min_rnn_units '
                                        r'must be <= rnn_units \(384\)'):
    configs.get_preset('cpu', 'min_rnn_units=512')
  with pytest.raises(ConfigError, match='min_budget_steps=-1 is not allowed'):
    configs.get_preset('cpu', 'min_budget_steps=-1')
  assert configs.get_preset('cpu', 'min_rnn_units=None').min_rnn_units is None


SIZED = 'min_rnn_units=256, min_budget_steps=800, max_train_seconds=300'


def _config(overrides=''):
  return TrainingConfig.from_settings(configs.get_preset('cpu', f'{SIZED}, {overrides}'))


def test_a_smaller_size_trains_at_a_proportionally_higher_learning_rate():
  config = _config('learning_rate=8e-3')
  assert config.sized(384) == config
  smaller = config.sized(256)
  assert (smaller.rnn_units, smaller.learning_rate) == (256, pytest.approx(0.012))
  assert smaller.min_rnn_units == 256 and smaller.min_budget_steps == 800


def test_the_cpu_preset_sizes_by_step_time_from_384_down_to_256():
  cpu = configs.get_preset('cpu')
  assert (cpu.rnn_units, cpu.min_rnn_units, cpu.min_budget_steps) == (384, 256, 1000)
  assert cpu.max_train_seconds == 300


def test_a_resumed_or_warm_started_run_keeps_its_size_without_timing(tmp_path):
  vocab = CharVocab.from_text('abcdef')
  config = _config()
  assert len(training.size_ladder(config.rnn_units, config.min_rnn_units)) > 1
  # Nothing fixes it: measure.
  assert trainer_module._size_without_timing(config, None, None, vocab) is None
  # Off: no budget, no step target, or a single size.
  for overrides in ('max_train_seconds=None', 'min_budget_steps=0', 'min_rnn_units=None'):
    choice = trainer_module._size_without_timing(_config(overrides), None, None, vocab)
    assert choice.rnn_units == 384 and 'size by step time is off' in choice.reason
  # Resuming: the backup's size.
  resumed = training.TrainingState(seed=0, step=50, rnn_units=256)
  choice = trainer_module._size_without_timing(config, resumed, None, vocab)
  assert (choice.rnn_units, choice.reason) == (256, 'the size of the run this one resumes')
  # A served model of a size on the ladder, same vocabulary: warm-start at its size.
  served = trainer_module._model_config(config.sized(320))
  _, base_dir = _base_model_dir(tmp_path / 'a', vocab.tokens, served)
  choice = trainer_module._size_without_timing(config, None, base_dir, vocab)
  assert (choice.rnn_units, choice.reason) == (320, "the served model's size, to warm-start "
                                                    'from it')
  # ... but not one off the ladder, another architecture or another vocabulary.
  for i, (other, tokens) in enumerate(((dict(served, rnn_units=300), vocab.tokens),
                                       (dict(served, embedding_dim=32), vocab.tokens),
                                       (served, CharVocab.from_text('abcdefg').tokens))):
    _, base_dir = _base_model_dir(tmp_path / f'other{i}', tokens, other)
    assert trainer_module._size_without_timing(config, None, base_dir, vocab) is None


@pytest.mark.parametrize('min_steps,units', [(1, 96), (10**6, 32)])
def test_run_fn_trains_the_chosen_size_and_says_why_in_metrics(tiny_pipeline, tmp_path,
                                                               min_steps, units):
  args = _run_fn_args(tiny_pipeline, str(tmp_path), '', (
      'epochs=1, steps_per_epoch=4, eval_steps=2, sample_chars=0, backup_every_steps=0, '
      f'rnn_units=96, min_rnn_units=32, min_budget_steps={min_steps}, max_train_seconds=600'))
  _run_fn_here(args)
  metrics = _metrics(args)
  assert metrics['config']['rnn_units'] == units
  # tiny's Adam 1e-2 is the rate for 96 units; 32 units train at 3x.
  assert metrics['config']['learning_rate'] == pytest.approx(1e-2 * 96 / units)
  assert metrics['state_size'] == units
  assert metrics['config']['min_rnn_units'] == 32
  assert set(metrics['rnn_units_step_ms']) == {'96', '32'}
  assert metrics['rnn_units_step_ms']['96'] > metrics['rnn_units_step_ms']['32'] > 0
  assert metrics['rnn_units_reason'].startswith('96 units measured ')
  if units == 96:
    assert metrics['rnn_units_reason'].endswith('at least min_budget_steps=1, so 96 units')
  else:
    assert 'no size down to 32 buys enough: the smallest, 32 units' in metrics['rnn_units_reason']
  with open(f'{args["serving"]}/assets.extra/keras/config.json') as f:
    assert json.load(f)['model_config']['rnn_units'] == units
