"""The Trainer's settings as one typed object, from configs.py to run_fn.

`pipeline/configs.py` holds the presets (every default, every knob) and builds a
`TrainingConfig` from the chosen one; the Trainer's custom_config carries it as
a plain dict (TFX stores custom_config as JSON), and `run_fn` rebuilds the very
same object with `TrainingConfig.from_custom_config`, which refuses a missing or
unknown key. So no default is written twice: there is no fallback in run_fn.

Why the object lives here and not in pipeline/: run_fn runs from the installed
`components` package (on Kubeflow, in the image, where pipeline/ is only the
runner), and components never import pipeline/. configs.py imports this module,
which imports no TensorFlow at import time, so configs stays cheap to import.

Every field carries its type (overrides are parsed by it: a boolean is one of
true/false/1/0/yes/no, never "anything else means False") and its rule (a
range, or the allowed values). Allowed values live beside the code that
implements them: rnn types and serving dtypes in `components/model.py`,
precisions and learning-rate schedules in `components/training.py`; the rules
here look them up when they check, so importing this module stays light.
"""

import dataclasses
import math
import typing
from typing import Any, Callable, Dict, Optional, Tuple

# Keys the Trainer's executor adds to custom_config at run time: facts about the
# input artifacts and where backups go, not settings.
RUNTIME_KEYS = ('vocabulary_uri', 'num_windows_train', 'num_windows_eval',
                'code_fingerprint', 'backup_dir', 'corpus')

BOOLEAN_WORDS = {'true': True, '1': True, 'yes': True,
                 'false': False, '0': False, 'no': False}


class ConfigError(ValueError):
  """A setting with the wrong type or out of range; the message names the field."""


# ------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class Rule:
  """What values a field accepts: `ok(value)` and the words for the error."""
  ok: Callable[[Any], bool]
  allowed: Callable[[], str]


def at_least(low) -> Rule:
  return Rule(lambda v: v >= low, lambda: f'>= {low}')


def greater_than(low) -> Rule:
  return Rule(lambda v: v > low, lambda: f'> {low}')


def in_range(low, high, low_open: bool = False, high_open: bool = True) -> Rule:
  def ok(v):
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  left, right = '(' if low_open else '[', ')' if high_open else ']'
  return Rule(ok, lambda: f'in {left}{low}, {high}{right}')


def one_of(values: Callable[[], Tuple[Any, ...]]) -> Rule:
  """`values` is called when checking: the tuple lives beside its implementation."""
  return Rule(lambda v: v in values(), lambda: 'one of ' + ', '.join(map(repr, values())))


def any_value() -> Rule:
  return Rule(lambda v: True, lambda: 'any value')


def setting(rule: Rule, **kwargs) -> Any:
  """A dataclass field with its rule attached (kwargs: default=..., for presets)."""
  return dataclasses.field(metadata={'rule': rule}, **kwargs)


def _rnn_types():
  from components import keras_model   # pylint: disable=g-import-not-at-top
  return keras_model.RNN_TYPES


def _serving_dtypes():
  from components import model   # pylint: disable=g-import-not-at-top
  return model.SERVING_MATMUL_DTYPES


def _precisions():
  from components import training   # pylint: disable=g-import-not-at-top
  return training.PRECISIONS


def _lr_schedules():
  from components import training   # pylint: disable=g-import-not-at-top
  return tuple(training.LR_SCHEDULES)


# ----------------------------------------------------------- types, parsing
def _base_type(hint) -> Tuple[type, bool]:
  """(the type, whether None is allowed) of `int`, `Optional[float]`, ..."""
  if typing.get_origin(hint) is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0], True
  return hint, False


def parse_value(name: str, hint, text: str) -> Any:
  """An override's text as the field's type; a ConfigError naming the field if not."""
  kind, optional = _base_type(hint)
  text = text.strip()
  if optional and text.lower() == 'none':
    return None
  if kind is bool:
    if text.lower() not in BOOLEAN_WORDS:
      raise ConfigError(f'{name}={text!r} is not a boolean: use one of '
                        f'{", ".join(BOOLEAN_WORDS)}')
    return BOOLEAN_WORDS[text.lower()]
  try:
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
  except ValueError:
    raise ConfigError(f'{name}={text!r} is not {"an integer" if kind is int else "a number"}'
                      + (' (or None)' if optional else '')) from None
  return text


def check_field(name: str, hint, rule: Optional[Rule], value: Any) -> Any:
  """`value` converted to the field's type (an int where a float goes) and checked."""
  kind, optional = _base_type(hint)
  if value is None:
    if optional:
      return None
    raise ConfigError(f'{name} must be set (None is not allowed)')
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if kind is int and isinstance(value, bool) or not isinstance(value, kind):
    raise ConfigError(f'{name}={value!r} has type {type(value).__name__}, not {kind.__name__}')
  if kind is float and not math.isfinite(value):
    raise ConfigError(f'{name}={value!r} is not a finite number')
  if rule is not None and not rule.ok(value):
    raise ConfigError(f'{name}={value!r} is not allowed: {name} must be {rule.allowed()}'
                      + (' (or None)' if optional else ''))
  return value


def check_fields(obj: Any) -> None:
  """Converts and checks every field of the (frozen) dataclass `obj` in place."""
  hints = typing.get_type_hints(type(obj))
  for f in dataclasses.fields(obj):
    value = check_field(f.name, hints[f.name], f.metadata.get('rule'), getattr(obj, f.name))
    object.__setattr__(obj, f.name, value)


# ----------------------------------------------------------- the object
@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Everything run_fn needs to know; no defaults (configs.py's presets have them)."""
  # Data as the model sees it: windows of seq_length + 1 ids.
  seq_length: int = setting(at_least(1))
  # Model (components/model.py).
  embedding_dim: int = setting(at_least(1))
  rnn_type: str = setting(one_of(_rnn_types))
  rnn_units: int = setting(at_least(1))
  # Size by step time (training.choose_size): with a time budget, rnn_units may
  # shrink (in steps of 64, not below min_rnn_units; None: fixed) until the
  # budget buys min_budget_steps steps (0: off).
  min_rnn_units: Optional[int] = setting(at_least(1))
  min_budget_steps: int = setting(at_least(0))
  num_layers: int = setting(at_least(1))
  dropout: float = setting(in_range(0.0, 1.0))
  # Optimisation.
  batch_size: int = setting(at_least(1))
  learning_rate: float = setting(greater_than(0.0))
  lr_schedule: str = setting(one_of(_lr_schedules))
  min_lr_ratio: float = setting(in_range(0.0, 1.0, high_open=False))
  clipnorm: float = setting(at_least(0.0))
  weight_decay: float = setting(at_least(0.0))
  precision: str = setting(one_of(_precisions))
  epochs: int = setting(at_least(1))
  steps_per_epoch: Optional[int] = setting(at_least(1))
  eval_steps: Optional[int] = setting(at_least(1))
  shuffle_buffer: int = setting(at_least(0))
  random_offsets: bool = setting(any_value())
  seed: Optional[int] = setting(in_range(0, 2**31))
  early_stopping_patience: int = setting(at_least(0))
  max_train_seconds: Optional[float] = setting(greater_than(0.0))
  # Faults and progress.
  divergence_loss_ratio: float = setting(greater_than(1.0))
  backup_every_steps: int = setting(at_least(0))
  progress_seconds: float = setting(greater_than(0.0))
  # Samples and export.
  sample_prompt: str = setting(any_value())
  sample_chars: int = setting(at_least(0))
  max_generate_chars: int = setting(at_least(1))
  serving_matmul_dtype: str = setting(one_of(_serving_dtypes))

  def __post_init__(self):
    check_fields(self)
    if self.min_rnn_units is not None and self.min_rnn_units > self.rnn_units:
      raise ConfigError(f'min_rnn_units={self.min_rnn_units} is not allowed: min_rnn_units '
                        f'must be <= rnn_units ({self.rnn_units}) (or None)')

  def sized(self, rnn_units: int) -> 'TrainingConfig':
    """This config at the size choose_size picked: what trains.

    learning_rate is the rate for rnn_units; a smaller size trains at
    learning_rate * rnn_units / size, as Adam's best rate grows about inversely
    with the width (muP). Measured here: GRU-384 best at 8e-3, GRU-256 at 1e-2 to
    1.4e-2 (7e-3 lost 0.08 nats/char: bench/results/quality_explore.json, Z3eq2_).
    """
    return dataclasses.replace(self, rnn_units=rnn_units,
                               learning_rate=self.learning_rate * self.rnn_units / rnn_units)

  @classmethod
  def names(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_settings(cls, settings: Any) -> 'TrainingConfig':
    """This object's fields taken from any object that has them (a configs.Preset)."""
    return cls(**{name: getattr(settings, name) for name in cls.names()})

  @classmethod
  def from_custom_config(cls, custom_config: Dict[str, Any]) -> 'TrainingConfig':
    """The object configs.py built, from the Trainer's custom_config; strict both ways."""
    names = set(cls.names())
    missing = sorted(names - set(custom_config))
    unknown = sorted(set(custom_config) - names - set(RUNTIME_KEYS))
    if missing or unknown:
      raise ConfigError(
          'custom_config does not match TrainingConfig: '
          + '; '.join(filter(None, [missing and f'missing {missing}',
                                    unknown and f'unknown {unknown}']))
          + ' (build it with configs.Preset.training_config())')
    return cls(**{name: custom_config[name] for name in names})

  def to_custom_config(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)
