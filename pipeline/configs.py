"""Every knob of Char-RNN TFX in one place.

Like the TFX templates' `configs.py`: components receive these values as
parameters, runners read them from here, and nothing else defines a default.
Environment variables override the defaults so that `tfx run create`, which just
re-executes the runner file, honours them too:

  CHAR_RNN_CORPUS       comma-separated sources: local paths, globs, http(s):// or gs:// URLs
  CHAR_RNN_PRESET       tiny | cpu | tutorial
  CHAR_RNN_OUTPUT_DIR   where pipeline artifacts, ML Metadata and pushed models land
  CHAR_RNN_OVERRIDES    comma-separated preset overrides, e.g. "epochs=2,rnn_units=256"
  CHAR_RNN_WARM_START   1 to warm-start training from the latest blessed model
  CHAR_RNN_BEAM_ARGS    space-separated Beam pipeline args (replaces the default)
"""

import dataclasses
import os
import shlex
import typing
from typing import Any, Dict, List, Optional

# ---------------------------------------------------------------- names, paths
# KFP v2 accepts only [a-z0-9-] in pipeline names, so the local one follows suit.
PIPELINE_NAME = os.environ.get('CHAR_RNN_PIPELINE_NAME', 'char-rnn')
# TF Serving's model name: the directory under the serving base and the name
# clients put in ModelSpec.name.
SERVING_MODEL_NAME = 'char_rnn'

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_DIR = os.path.abspath(
    os.environ.get('CHAR_RNN_OUTPUT_DIR', os.path.join(PROJECT_DIR, 'outputs')))

# The tutorial's corpus, shipped in the repository (data/README.md says where it
# comes from) so that a clone with nothing beside it runs offline. The URL is
# where the tutorial downloads it: the default on a cluster, which sees no clone.
EMBEDDED_CORPUS = os.path.join(PROJECT_DIR, 'data', 'tinyshakespeare.txt')
TUTORIAL_CORPUS_URL = ('https://storage.googleapis.com/download.tensorflow.org/'
                       'data/shakespeare.txt')
CORPUS_SOURCES: List[str] = [
    s.strip()
    for s in os.environ.get('CHAR_RNN_CORPUS', EMBEDDED_CORPUS).split(',')
    if s.strip()
]

# Beam: the DirectRunner locally; pass e.g. '--runner=DataflowRunner ...' here
# (or through CHAR_RNN_BEAM_ARGS) to run CorpusIngest and WindowGen elsewhere unchanged.
# `--setup_file` names this project as what remote workers install; without
# one, TFX builds an sdist of itself for every Beam executor (~10 s each here),
# which local runners never use.
BEAM_PIPELINE_ARGS: List[str] = shlex.split(
    os.environ.get('CHAR_RNN_BEAM_ARGS',
                   '--direct_running_mode=in_memory --direct_num_workers=1 '
                   f'--setup_file={shlex.quote(os.path.join(PROJECT_DIR, "setup.py"))}'))

WARM_START = os.environ.get('CHAR_RNN_WARM_START', '0') not in ('', '0', 'false')

# The trainer's run_fn is referenced by import path rather than a module file:
# the same installed code runs on the laptop and inside the Kubeflow image.
TRAINER_RUN_FN = 'components.trainer_module.run_fn'


def pipeline_root(output_dir: str = OUTPUT_DIR) -> str:
  return os.path.join(output_dir, 'pipeline_root', PIPELINE_NAME)


def metadata_path(output_dir: str = OUTPUT_DIR) -> str:
  return os.path.join(output_dir, 'metadata', PIPELINE_NAME, 'metadata.db')


def serving_model_dir(output_dir: str = OUTPUT_DIR) -> str:
  """The Pusher's base: versions land in <this>/<SERVING_MODEL_NAME>/<version>/."""
  return os.path.join(output_dir, 'serving_model')


# ------------------------------------------------------------------- presets
# The one import of ours: the Trainer's typed settings (components/training_config.py
# says why they live there). It imports no TensorFlow; the allowed values it
# checks against are looked up beside their code only when a preset is checked.
from components import training_config as tc  # pylint: disable=g-import-not-at-top,wrong-import-position

NORMALIZATION_FORMS = ('', 'NFC', 'NFD', 'NFKC', 'NFKD')   # unicodedata's


@dataclasses.dataclass(frozen=True)
class Preset:
  """Data, model, training and gate settings for one pipeline run.

  The training fields are `TrainingConfig`'s (same names and types; their rules
  live there); the data and gate fields carry their rules here.
  `get_preset` checks every field; `training_config()` is what run_fn receives.
  """
  # Data (WindowGen). Windows hold seq_length + 1 ids: input and shifted target.
  seq_length: int = 100
  stride: Optional[int] = tc.setting(tc.at_least(1), default=None)   # None: seq_length
  # The last 10% of characters evaluate (nanoGPT's split).
  eval_fraction: float = tc.setting(tc.in_range(0.0, 0.5, low_open=True), default=0.1)
  # Corpus shard size; bounds WindowGen's memory.
  shard_chars: int = tc.setting(tc.at_least(1), default=4_000_000)
  # '' keeps the text's own normal form.
  unicode_normalization: str = tc.setting(tc.one_of(lambda: NORMALIZATION_FORMS),
                                          default='NFC')
  # Model.
  embedding_dim: int = 256
  rnn_type: str = 'gru'                 # gru | lstm
  rnn_units: int = 1024
  # Size by step time: under max_train_seconds, the Trainer times a step of
  # rnn_units and, when the budget would buy fewer than min_budget_steps steps,
  # trains a smaller layer (rnn_units - 64, - 128, ... not below min_rnn_units;
  # None: rnn_units always) at learning_rate * rnn_units / size (muP's rule for
  # Adam). metrics.json says which size and why.
  min_rnn_units: Optional[int] = None
  min_budget_steps: int = 0
  num_layers: int = 1
  dropout: float = 0.0
  # Training.
  batch_size: int = 64
  learning_rate: float = 1e-3
  lr_schedule: str = 'constant'         # constant | cosine (to lr * min_lr_ratio)
  min_lr_ratio: float = 0.1
  # Clip each weight's gradient to this L2 norm (Keras' `clipnorm`; 0: off): RNNs
  # at high learning rates meet occasional exploding gradients.
  clipnorm: float = 0.0
  # AdamW's decoupled weight decay (0: Adam, as the tutorial): each step takes
  # learning_rate * weight_decay of every weight away, a pull towards zero
  # against overfitting the 1 M training characters in many passes.
  weight_decay: float = 0.0
  # auto: on a CPU with native bf16 (AVX512-BF16, AMX) the Trainer times a few
  # steps of float32 and mixed_bfloat16 and keeps bf16 only if >= 5% faster (1.55x
  # on Zen 4, none on a Xeon with AMX: bench/train); float32 elsewhere, GPUs
  # included; metrics.json says which and why | float32 | mixed_bfloat16 |
  # mixed_float16 (GPUs). The export stays float32 (serving_matmul_dtype).
  precision: str = 'auto'
  epochs: int = 20
  steps_per_epoch: Optional[int] = None  # None: one full pass over the train split
  eval_steps: Optional[int] = None       # None: the whole eval split
  shuffle_buffer: int = 10_000
  # Re-cut every training window at a random offset (needs stride == seq_length):
  # the same text each epoch, never the same cuts (make_dataset explains).
  random_offsets: bool = False
  # Initial weights, data order and offsets; None draws a fresh seed every run.
  # A time budget still makes the number of steps depend on the machine's speed.
  seed: Optional[int] = 0
  early_stopping_patience: int = 0       # 0: off
  # Seconds from the start of the Trainer's run_fn to the end of its export:
  # training stops early enough that the last validation, sample and export fit.
  max_train_seconds: Optional[float] = None
  # Faults. Training stops as diverged (nothing exported) when the loss is NaN,
  # infinite or above this many times a uniform guess's (ln of the vocabulary size).
  divergence_loss_ratio: float = 100.0
  # Step backups (0: off), kept where the next execution with the same inputs
  # and settings resumes from them after a kill; deleted after a successful run.
  backup_every_steps: int = 50
  # Progress: an updating line on a terminal, else a log line this often.
  progress_seconds: float = 30.0
  sample_prompt: str = 'ROMEO:'
  sample_chars: int = 200                # logged after every epoch
  # Export.
  max_generate_chars: int = 10_000       # `generate` rejects num_chars above this
  # float32 | bfloat16: the served model's matmuls (~1.6x throughput at batch 64 on
  # CPUs with AVX512-BF16; slower at batch 1 and without native bf16).
  serving_matmul_dtype: str = 'float32'
  # Evaluation gate. Bless only when the eval loss is at most max_eval_loss_ratio
  # times the eval text's unigram entropy (nats/char: 3.337 on tiny Shakespeare),
  # a threshold that means the same for every vocabulary, and at most
  # max_eval_loss (nats/char; None: no absolute cap) ...
  max_eval_loss_ratio: float = tc.setting(tc.greater_than(0.0), default=1.0)
  max_eval_loss: Optional[float] = tc.setting(tc.greater_than(0.0), default=None)
  # ... and no worse than the blessed baseline + this.
  regression_tolerance: float = tc.setting(tc.at_least(0.0), default=0.02)

  @property
  def window_stride(self) -> int:
    return self.stride or self.seq_length

  def check(self) -> 'Preset':
    """Every field's type and range; errors name the field and the allowed values."""
    tc.check_fields(self)
    tc.TrainingConfig.from_settings(self)
    if self.random_offsets and self.window_stride != self.seq_length:
      raise tc.ConfigError(
          f'random_offsets re-cuts windows that tile the text: it needs stride == '
          f'seq_length ({self.seq_length}), not {self.window_stride}')
    return self

  def training_config(self) -> Dict[str, Any]:
    """What the Trainer's run_fn receives as custom_config (TrainingConfig's fields)."""
    return tc.TrainingConfig.from_settings(self).to_custom_config()


PRESETS: Dict[str, Preset] = {
    # Seconds on two cores: for CI and the end-to-end test.
    'tiny': Preset(
        embedding_dim=16, rnn_units=32, batch_size=32, learning_rate=1e-2,
        epochs=1, steps_per_epoch=20, eval_steps=5, shuffle_buffer=1000,
        sample_chars=40, backup_every_steps=5, progress_seconds=5.0,
        max_eval_loss_ratio=1.26, regression_tolerance=0.5),
    # The default: the best eval loss we reach in about 5 minutes of training on
    # a 2-core CPU (bench/quality measures it beside the tutorial's recipe;
    # bench/quality/explore.py compared the alternatives): a high learning rate
    # made safe by clipping and annealed over the 5-minute budget, windows re-cut
    # at random offsets every epoch against the ~0.3 train/eval gap, and the
    # size the machine can afford: GRU-384 where 5 minutes buy >= 1,000 steps
    # (Zen 4 in bf16: 1,150-1,250; it beats GRU-256 there by 0.03), else 320 or
    # 256 (Zen 3 in float32 buys 520-970 steps of 384, which then loses: in equal
    # time GRU-256 by 0.03 at ~520 steps; GRU-384 after 816 steps led the
    # tutorial's recipe by 0.039, GRU-320 after 1,012 and 1,358 by 0.062 and 0.054).
    # No larger: where 5 minutes buy more (Zen 5: ~1,500 steps of 384), GRU-448 and
    # GRU-512 scored the same within the noise, as did dropout 0.1 and 0.2.
    # AdamW's weight decay 0.1 (10 passes over the text overfit; the decay pulls
    # back): 0.014 better at ~1,250 steps on Zen 5, the same at 800 steps.
    'cpu': Preset(
        embedding_dim=64, rnn_units=384, min_rnn_units=256, min_budget_steps=1000,
        batch_size=64, learning_rate=8e-3, lr_schedule='cosine', min_lr_ratio=0.02,
        clipnorm=1.0, weight_decay=0.1, random_offsets=True, epochs=50,
        max_train_seconds=300, max_eval_loss_ratio=0.55),
    # The tutorial's exact settings: 256/1024 GRU, batch 64, Adam(1e-3), 20
    # epochs over non-overlapping 101-character chunks. For GPUs (where `auto`
    # precision is float32, as in the tutorial).
    'tutorial': Preset(stride=101, max_eval_loss_ratio=0.55),
}

PRESET_NAME = os.environ.get('CHAR_RNN_PRESET', 'cpu')


def _parse_overrides(text: str) -> Dict[str, Any]:
  """`field=value, ...` with each value parsed by its field's type (typing hints)."""
  hints = typing.get_type_hints(Preset)
  out: Dict[str, Any] = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in hints:
      raise ValueError(
          f'CHAR_RNN_OVERRIDES: {item!r} is not <field>=<value> with a field of '
          f'Preset ({", ".join(sorted(hints))})')
    out[key] = tc.parse_value(key, hints[key], value)
  return out


def get_preset(name: Optional[str] = None,
               overrides: Optional[str] = None) -> Preset:
  name = name or PRESET_NAME
  if name not in PRESETS:
    raise ValueError(f'Unknown preset {name!r}; choose one of {sorted(PRESETS)}')
  if overrides is None:
    overrides = os.environ.get('CHAR_RNN_OVERRIDES', '')
  return dataclasses.replace(PRESETS[name], **_parse_overrides(overrides)).check()


# ---------------------------------------------------------------- Kubeflow
# Knobs of pipeline/kubeflow_runner.py (compile), pipeline/schedule.py (upload
# and recurring run) and the Dockerfile's image. Same rule: environment
# variables override; the runners' flags override both.
#
#   CHAR_RNN_IMAGE              the pipeline image every KFP task runs (built from ./Dockerfile)
#   CHAR_RNN_KFP_PIPELINE_ROOT  where KFP puts artifacts: gs://... (TensorFlow reads and
#                               writes it natively; s3:// would need tensorflow-io in the image)
#   CHAR_RNN_KFP_CORPUS         comma-separated corpus sources as the cluster sees them
#   CHAR_RNN_KFP_SERVING_DIR    the Pusher's base on the cluster (TF Serving watches <this>/char_rnn)
#   CHAR_RNN_KFP_BEAM_ARGS      Beam args for WindowGen on the cluster (e.g. --runner=DataflowRunner ...)
#   CHAR_RNN_KFP_WARM_START     0 to train every scheduled run from scratch (default: each
#                               run continues from the served model's weights when they fit)
#   CHAR_RNN_KFP_SPEC           the compiled PipelineSpec (YAML)
#   CHAR_RNN_KFP_HOST           the KFP API endpoint, e.g. http://localhost:8080 after
#                               `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`
#   CHAR_RNN_KFP_NAMESPACE      the user namespace of a multi-user KFP ('' for single-user)
#   CHAR_RNN_KFP_EXPERIMENT     the experiment that holds the recurring run
#   CHAR_RNN_KFP_CRON           KFP's 6-field cron (seconds first): daily at 03:00 UTC by default
IMAGE = os.environ.get('CHAR_RNN_IMAGE', 'char-rnn-tfx:0.1.0')
KFP_PIPELINE_ROOT = os.environ.get('CHAR_RNN_KFP_PIPELINE_ROOT',
                                   'gs://char-rnn-tfx/pipeline_root')
KFP_CORPUS_SOURCES: List[str] = [
    s.strip()
    for s in os.environ.get('CHAR_RNN_KFP_CORPUS', TUTORIAL_CORPUS_URL).split(',')
    if s.strip()
]
KFP_SERVING_MODEL_DIR = os.environ.get('CHAR_RNN_KFP_SERVING_DIR',
                                       'gs://char-rnn-tfx/serving_model')
KFP_BEAM_PIPELINE_ARGS: List[str] = shlex.split(
    os.environ.get('CHAR_RNN_KFP_BEAM_ARGS',
                   '--direct_running_mode=multi_processing --direct_num_workers=0'))
KFP_WARM_START = os.environ.get('CHAR_RNN_KFP_WARM_START', '1') not in ('', '0', 'false')
KFP_PIPELINE_SPEC = os.environ.get(
    'CHAR_RNN_KFP_SPEC', os.path.join(OUTPUT_DIR, 'kubeflow', f'{PIPELINE_NAME}.yaml'))
KFP_HOST = os.environ.get('CHAR_RNN_KFP_HOST', 'http://localhost:8080')
KFP_NAMESPACE = os.environ.get('CHAR_RNN_KFP_NAMESPACE', '')
KFP_EXPERIMENT = os.environ.get('CHAR_RNN_KFP_EXPERIMENT', PIPELINE_NAME)
KFP_SCHEDULE_CRON = os.environ.get('CHAR_RNN_KFP_CRON', '0 0 3 * * *')
# The parameters that stand for the corpus content and the served model on the
# cluster. Compiling must not read either (they live where the cluster is), and
# both tasks run uncached there, so these only have to be fixed.
KFP_CORPUS_FINGERPRINT = 'kfp-uncached-ingest'
KFP_SERVED_MODEL_FINGERPRINT = 'kfp-uncached-served-model'
# Executors whose tasks must run every time on KFP (cachingOptions emptied at
# compile time and kept so by pipeline/schedule.py): they look at what the
# cluster holds now (the corpus; the newest version under the serving dir),
# which their parameters cannot say.
KFP_UNCACHED_EXECUTORS = ('components.corpus_ingest.Executor',
                          'components.served_model.Executor')
# The Trainer on a worker pool (pipeline/kubeflow_runner.py --trainer-workers):
# with N > 1 workers the Trainer task launches a Vertex AI CustomJob of one chief
# and N - 1 workers running the pipeline image (components/vertex_trainer.py),
# which train data-parallel from the TF_CONFIG Vertex gives each
# (components/multiworker.py); 0 or 1 trains inside the KFP task, as before.
#   CHAR_RNN_KFP_TRAINER_WORKERS       number of workers (default 0: no worker pool)
#   CHAR_RNN_KFP_TRAINER_MACHINE_TYPE  each replica's Compute Engine machine type
#   CHAR_RNN_VERTEX_PROJECT            the GCP project the CustomJob runs in
#   CHAR_RNN_VERTEX_REGION             its Vertex AI region
KFP_TRAINER_WORKERS = int(os.environ.get('CHAR_RNN_KFP_TRAINER_WORKERS', '0'))
KFP_TRAINER_MACHINE_TYPE = os.environ.get('CHAR_RNN_KFP_TRAINER_MACHINE_TYPE', 'n1-standard-8')
VERTEX_PROJECT = os.environ.get('CHAR_RNN_VERTEX_PROJECT', 'char-rnn-tfx')
VERTEX_REGION = os.environ.get('CHAR_RNN_VERTEX_REGION', 'europe-west4')
