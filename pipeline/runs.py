"""What each pipeline run did, read back from ML Metadata: one reader for the report and status.

TFX's local engine records every run in ML Metadata (SQLite): a `pipeline_run`
context per run, one execution per component (COMPLETE, CACHED or FAILED, with
its create and last-update times), and the artifacts each execution read and
wrote, whose properties and files say the rest:

  Corpus        sources, num_chars, fingerprint
  Vocabulary    vocab_size, vocabulary.json
  Examples      num_windows_train / num_windows_eval
  Model         Format-Serving/assets.extra/metrics.json (eval loss, steps, epoch history)
  ModelRun      history.json (per-step and per-epoch figures) and TensorBoard event files
  ModelBlessing evaluation.json (the gate's decision, both losses, the reasons)
  PushedModel   pushed, pushed_version, pushed_destination
  ServedModel's Model  served_version (the gate's baseline)

A cached component's execution points at the artifacts of the run that made them,
so a run always has its full set. Files that are missing (an older run, a trainer
that did not write history.json) leave their fields empty rather than failing.
"""

import dataclasses
import datetime
import glob
import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import configs

_EXECUTION_STATE = {v: k.lower() for k, v in metadata_store_pb2.Execution.State.items()}
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
HISTORY_FILE = 'history.json'
METRICS_FILE = 'metrics.json'
EVALUATION_FILE = 'evaluation.json'
VOCAB_FILE = 'vocabulary.json'


class NoRunsError(Exception):
  """The metadata store has no run (or not the one asked for)."""


@dataclasses.dataclass
class ComponentRecord:
  name: str
  state: str                 # complete | cached | failed | running | ...
  started: float             # epoch seconds
  finished: float

  @property
  def seconds(self) -> float:
    return max(0.0, self.finished - self.started)


@dataclasses.dataclass
class RunRecord:
  run_id: str
  started: float
  finished: float
  components: List[ComponentRecord]
  outputs: Dict[str, Dict[str, Any]]   # component -> output key -> {'uri', 'properties'}
  trainer_config: Dict[str, Any]
  _cache: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

  # ---------------------------------------------------------------- helpers
  @property
  def state(self) -> str:
    states = {c.state for c in self.components}
    if 'failed' in states:
      return 'failed'
    if states & {'running', 'new'}:
      return 'running'
    return 'complete'

  @property
  def failed_component(self) -> Optional[str]:
    return next((c.name for c in self.components if c.state == 'failed'), None)

  def artifact(self, component: str, key: str) -> Optional[Dict[str, Any]]:
    return self.outputs.get(component, {}).get(key)

  def prop(self, component: str, key: str, name: str, default=None):
    found = self.artifact(component, key)
    return found['properties'].get(name, default) if found else default

  def started_text(self) -> str:
    return datetime.datetime.fromtimestamp(self.started).strftime('%Y-%m-%d %H:%M:%S')

  # ---------------------------------------------------------------- facts
  def corpus(self) -> Dict[str, Any]:
    found = self.artifact('CorpusIngest', 'corpus')
    if not found:
      return {}
    props = found['properties']
    return {'sources': props.get('sources', ''), 'num_chars': props.get('num_chars'),
            'fingerprint': props.get('fingerprint', ''), 'num_shards': props.get('num_shards')}

  def vocabulary(self) -> List[str]:
    found = self.artifact('VocabularyGen', 'vocabulary')
    data = _read_json(os.path.join(found['uri'], VOCAB_FILE)) if found else None
    return list(data.get('tokens', [])) if isinstance(data, dict) else []

  def metrics(self) -> Dict[str, Any]:
    found = self.artifact('CharRnnTrainer', 'model')
    if not found:
      return {}
    data = _read_json(os.path.join(found['uri'], 'Format-Serving', 'assets.extra', METRICS_FILE))
    return data if isinstance(data, dict) else {}

  def model_run_dir(self) -> Optional[str]:
    found = self.artifact('CharRnnTrainer', 'model_run')
    return found['uri'] if found else None

  def history(self) -> Dict[str, Any]:
    """history.json from the ModelRun dir, else what TensorBoard and metrics.json hold."""
    if '_history' not in self._cache:
      self._cache['_history'] = self._read_history()
    return self._cache['_history']

  def _read_history(self) -> Dict[str, Any]:
    run_dir = self.model_run_dir()
    if run_dir:
      data = _read_json(os.path.join(run_dir, HISTORY_FILE))
      if isinstance(data, dict):
        data.setdefault('steps', [])
        data.setdefault('epochs', [])
        data['source'] = HISTORY_FILE
        return data
    return _history_from_events(run_dir, self.metrics())

  def evaluation(self) -> Dict[str, Any]:
    found = self.artifact('EvaluationGate', 'blessing')
    if not found:
      return {}
    data = _read_json(os.path.join(found['uri'], EVALUATION_FILE))
    if not isinstance(data, dict):
      data = {}
    data.setdefault('blessed', bool(found['properties'].get('blessed', 0)))
    return data

  def pushed_version(self) -> Optional[int]:
    found = self.artifact('Pusher', 'pushed_model')
    if not found or not found['properties'].get('pushed'):
      return None
    version = found['properties'].get('pushed_version')
    return int(version) if version not in (None, '') else None

  def baseline_version(self) -> Optional[int]:
    version = self.prop('ServedModel', 'model', 'served_version')
    return int(version) if version else None

  def preset(self) -> str:
    return preset_name(self.trainer_config)


# -------------------------------------------------------------------- reading
def _read_json(path: str) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _value(value: metadata_store_pb2.Value):
  which = value.WhichOneof('value')
  if which == 'struct_value':
    from google.protobuf import json_format
    return json_format.MessageToDict(value.struct_value)
  return getattr(value, which) if which else None


def _properties(message) -> Dict[str, Any]:
  out = {k: _value(v) for k, v in message.custom_properties.items()}
  out.update({k: _value(v) for k, v in message.properties.items()})
  return out


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
  if not os.path.exists(metadata_path):
    raise NoRunsError(f'no ML Metadata at {metadata_path}: no pipeline has run there yet')
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  return metadata_store.MetadataStore(config)


def run_ids(store: metadata_store.MetadataStore) -> List[str]:
  """Every run's id, oldest first."""
  contexts = store.get_contexts_by_type('pipeline_run')
  return [c.name for c in sorted(contexts, key=lambda c: (c.create_time_since_epoch, c.id))]


def read_run(store: metadata_store.MetadataStore, run_id: Optional[str] = None) -> RunRecord:
  """One run (default: the newest) with its executions and their output artifacts."""
  ids = run_ids(store)
  if not ids:
    raise NoRunsError('ML Metadata holds no pipeline run yet')
  run_id = run_id or ids[-1]
  context = store.get_context_by_type_and_name('pipeline_run', run_id)
  if context is None:
    raise NoRunsError(f'no run {run_id!r}; runs: {", ".join(ids)}')
  executions = store.get_executions_by_context(context.id)
  node_type = store.get_context_type('node').id
  components, outputs, trainer_config = [], {}, {}
  events = store.get_events_by_execution_ids([e.id for e in executions])
  artifact_ids = sorted({e.artifact_id for e in events if e.type in _OUTPUT_EVENTS})
  artifacts = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}
  for execution in sorted(executions, key=lambda e: (e.create_time_since_epoch, e.id)):
    nodes = [c for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
    name = nodes[0].name.split('.', 1)[-1] if nodes else f'execution-{execution.id}'
    components.append(ComponentRecord(
        name=name, state=_EXECUTION_STATE.get(execution.last_known_state, 'unknown'),
        started=execution.create_time_since_epoch / 1000,
        finished=execution.last_update_time_since_epoch / 1000))
    for event in events:
      if event.execution_id != execution.id or event.type not in _OUTPUT_EVENTS:
        continue
      artifact = artifacts.get(event.artifact_id)
      if artifact is None or not event.path.steps:
        continue
      outputs.setdefault(name, {})[event.path.steps[0].key] = {
          'uri': artifact.uri, 'properties': _properties(artifact)}
    if name == 'CharRnnTrainer':
      raw = _properties(execution).get('custom_config')
      try:
        trainer_config = json.loads(raw) if raw else {}
      except ValueError:
        trainer_config = {}
  return RunRecord(run_id=run_id,
                   started=min((c.started for c in components), default=0.0),
                   finished=max((c.finished for c in components), default=0.0),
                   components=components, outputs=outputs, trainer_config=trainer_config)


def read_runs(metadata_path: str) -> List[RunRecord]:
  store = open_store(metadata_path)
  return [read_run(store, run_id) for run_id in run_ids(store)]


def preset_name(trainer_config: Dict[str, Any]) -> str:
  """The preset a run's Trainer config came from, with the overrides that differ."""
  if not trainer_config:
    return 'unknown'
  if isinstance(trainer_config.get('preset'), str):
    return trainer_config['preset']
  best, best_diff = None, None
  for name, preset in configs.PRESETS.items():
    # The Preset's own fields (training_config() would validate through the model
    # code and import TensorFlow: seconds that `make status` does not need).
    fields = dataclasses.asdict(preset)
    diff = {k: trainer_config[k] for k in fields
            if k in trainer_config and trainer_config[k] != fields[k]}
    if best_diff is None or len(diff) < len(best_diff):
      best, best_diff = name, diff
  if not best_diff:
    return best
  return best + ' ' + ','.join(f'{k}={v}' for k, v in sorted(best_diff.items()))


# -------------------------------------------------------------------- TensorBoard fallback
def _events(directory: str):
  """(step, tag, value) of every scalar or text summary in a TensorBoard run directory."""
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  out = []
  for path in sorted(glob.glob(os.path.join(directory, 'events.out.tfevents.*'))):
    for event in event_file_loader.LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        if value.HasField('tensor'):
          array = tensor_util.make_ndarray(value.tensor)
          if array.dtype == object:
            item = array.reshape(-1)[0] if array.size else b''
            out.append((event.step, value.tag,
                        item.decode('utf-8', 'replace') if isinstance(item, bytes) else str(item)))
          elif array.size == 1:
            out.append((event.step, value.tag, float(array.reshape(-1)[0])))
        elif value.HasField('simple_value'):
          out.append((event.step, value.tag, float(value.simple_value)))
  return out


def _history_from_events(run_dir: Optional[str], metrics: Dict[str, Any]) -> Dict[str, Any]:
  """Per-epoch figures from Keras' TensorBoard logs and metrics.json (no per-step data).

  Keras writes epoch summaries at step = epoch index (0-based); the Trainer's sample
  text at step = epoch number (1-based).
  """
  epochs: Dict[int, Dict[str, Any]] = {}
  if run_dir and os.path.isdir(run_dir):
    for sub, key in (('train', 'loss'), ('validation', 'val_loss')):
      for step, tag, value in _events(os.path.join(run_dir, sub)):
        if tag == 'epoch_loss':
          epochs.setdefault(step + 1, {})[key] = value
        elif tag == 'epoch_learning_rate' and sub == 'train':
          epochs.setdefault(step + 1, {})['learning_rate'] = value
    for step, tag, value in _events(os.path.join(run_dir, 'samples')):
      if tag == 'sample' and isinstance(value, str):   # written with step = epoch (1-based)
        epochs.setdefault(step, {})['sample'] = value
  history = metrics.get('history') or {}
  for i, loss in enumerate(history.get('loss', [])):
    epochs.setdefault(i + 1, {}).setdefault('loss', loss)
  for i, loss in enumerate(history.get('val_loss', [])):
    epochs.setdefault(i + 1, {}).setdefault('val_loss', loss)
  config = metrics.get('config') or {}
  return {'steps': [], 'epochs': [dict(epoch=e, **v) for e, v in sorted(epochs.items())],
          'time_budget_seconds': config.get('max_train_seconds'),
          'stop_reason': ('time budget' if metrics.get('stopped_by_time_budget')
                          else 'epochs done' if metrics else ''),
          'source': 'TensorBoard logs + metrics.json (no history.json)'}
