"""Which SavedModel versions are loaded, and how a request finds one: TF Serving's lifecycle.

TF Serving watches `<base_path>/<integer version>/` directories, loads the versions
its version policy asks for, serves each request on one loaded version, and
swaps versions without dropping requests. This module does the same, in the same
order, so that a client sees the same behaviour from our server and from the
real binary:

* A version directory counts only once `saved_model.pb` is in it (the TFX Pusher
  copies that file last), so a half-copied push is never loaded.
* Policies: `latest { num_versions }` (default 1), `all {}`, `specific { versions }`.
* A new version is loaded (state LOADING) and published (AVAILABLE) before any
  version it replaces is unloaded (END). A request holds a reference to the
  version it was given, so requests in flight finish on the old version.
* A version that fails to load is reported (END + error) and the versions
  already serving stay. Like TF Serving it is retried, up to
  `max_num_load_retries` times, `load_retry_interval_micros` apart (doubling
  after each failure; TF Serving waits the same interval each time); a new copy
  (its saved_model.pb changes) starts the count again. The retry is a later
  poll, so a failing version never holds up the others.
* A version directory is a name of plain ASCII digits ([0-9]+, fits int64);
  anything else (`latest`, `1.tmp`, `²`, for which str.isdigit() is True) is
  ignored with one log line per name.
* Clients see short messages; the log has the detail (exception text, paths).
* Unknown model/version -> NOT_FOUND, unknown label -> INVALID_ARGUMENT, with
  TF Serving's message texts ("Servable not found for request: Latest(x)", ...).

Reads only the SavedModel (`tf.saved_model.load` + the SignatureDefs from
saved_model.pb): no training code.
"""

import dataclasses
import logging
import os
import re
import threading
import time
import warnings
from typing import Dict, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

log = logging.getLogger('serving')

State = get_model_status_pb2.ModelVersionStatus.State
SAVED_MODEL_PB = 'saved_model.pb'
DEFAULT_SIGNATURE = 'serving_default'
# TF Serving hides the init-op pseudo signature from clients.
_HIDDEN_SIGNATURES = ('__saved_model_init_op',)

# TF error codes and gRPC status codes share their numbers.
GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


# TF Serving's defaults for --max_num_load_retries / --load_retry_interval_micros.
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_MICROS = 60_000_000
_VERSION_DIR = re.compile(r'[0-9]+')
_MAX_VERSION = 2**63 - 1   # ModelVersionStatus.version is an int64


class RequestError(Exception):
  """A request failure with the gRPC status code TF Serving would answer.

  (Named apart from serving.client.ServingError, the client library's error:
  one is what the server answers, the other what a client raises.)
  """

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


@dataclasses.dataclass
class Servable:
  """One loaded version: the TF object, its callables and SignatureDefs."""
  name: str
  version: int
  path: str
  loaded: object
  signature_defs: Dict[str, meta_graph_pb2.SignatureDef]

  def function(self, signature_name: str):
    return self.loaded.signatures[signature_name]


def read_signature_defs(version_dir: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, SAVED_MODEL_PB), 'rb') as f, warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)   # protobuf's note on a corrupt file
    saved_model.ParseFromString(f.read())
  if not saved_model.meta_graphs:
    raise ValueError(f'{SAVED_MODEL_PB} holds no MetaGraphDef')
  defs = saved_model.meta_graphs[0].signature_def
  return {k: defs[k] for k in sorted(defs) if k not in _HIDDEN_SIGNATURES}


def load_servable(name: str, version: int, path: str) -> Servable:
  signature_defs = read_signature_defs(path)
  loaded = tf.saved_model.load(path)
  missing = sorted(set(signature_defs) - set(loaded.signatures))
  if missing:
    raise ValueError(f'signatures {missing} are in saved_model.pb but could not be restored')
  return Servable(name, version, path, loaded, signature_defs)


_ignored_names = set()   # (base_path, entry) already logged as not a version
_ignored_lock = threading.Lock()


def _is_version_dir(base_path: str, entry: str) -> bool:
  if _VERSION_DIR.fullmatch(entry) and int(entry) <= _MAX_VERSION:
    return True
  with _ignored_lock:
    if (base_path, entry) in _ignored_names:
      return False
    _ignored_names.add((base_path, entry))
  if os.path.isdir(os.path.join(base_path, entry)):
    log.info('Ignoring %r under %s: a version directory is named with ASCII digits only '
             '(at most 2^63-1)', entry, base_path)
  return False


def ready_versions(base_path: str) -> Dict[int, str]:
  """Version dirs ([0-9]+) that hold a saved_model.pb: {version: path}."""
  try:
    entries = os.listdir(base_path)
  except OSError:
    return {}
  found = {}
  for entry in entries:
    if not _is_version_dir(base_path, entry):
      continue
    path = os.path.join(base_path, entry)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_PB)):
      found[int(entry)] = path
  return found


def aspired_versions(policy, on_disk: List[int]) -> List[int]:
  """The versions a ServableVersionPolicy wants loaded, of those ready on disk."""
  which = policy.WhichOneof('policy_choice')
  if which == 'all':
    return sorted(on_disk)
  if which == 'specific':
    wanted = set(policy.specific.versions)
    return sorted(v for v in on_disk if v in wanted)
  n = policy.latest.num_versions if which == 'latest' and policy.latest.num_versions else 1
  return sorted(on_disk)[-n:]


@dataclasses.dataclass
class _VersionState:
  state: int
  error_code: grpc.StatusCode = grpc.StatusCode.OK
  error_message: str = ''
  failed_mtime: Optional[float] = None   # saved_model.pb mtime of a failed load
  failures: int = 0                       # failed loads of that copy so far
  retry_at: float = 0.0                   # time.monotonic() of the next attempt


class _Model:
  def __init__(self, config: model_server_config_pb2.ModelConfig):
    self.config = config
    self.servables: Dict[int, Servable] = {}      # published (AVAILABLE) versions
    self.states: Dict[int, _VersionState] = {}


class ModelManager:
  """Holds the served models; `poll()` brings them in line with disk and config."""

  def __init__(self, config: model_server_config_pb2.ModelServerConfig, *,
               max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
               load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS):
    self.max_num_load_retries = max(0, int(max_num_load_retries))
    self.load_retry_interval = max(0, int(load_retry_interval_micros)) / 1e6
    self._lock = threading.Lock()          # guards _models' dicts (short holds only)
    self._poll_lock = threading.Lock()     # one poll (load/unload pass) at a time
    self._models: Dict[str, _Model] = {}
    self.set_config(config)

  # ------------------------------------------------------------ configuration
  @staticmethod
  def validate_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    if config.WhichOneof('config') != 'model_config_list':
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                         'ModelServerConfig must contain a model_config_list '
                         '(custom_model_config is not supported)')
    seen = set()
    for model in config.model_config_list.config:
      if not model.name:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 'Model name must be set')
      if model.name in seen:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Illegal to list model {model.name} multiple times in config list')
      seen.add(model.name)
      if not model.base_path:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Model {model.name} has no base_path')
      if model.model_platform not in ('', 'tensorflow'):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Model {model.name}: unsupported model_platform '
                           f'"{model.model_platform}" (only "tensorflow")')

  def set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Replaces the model list; call `poll()` to load/unload accordingly."""
    self.validate_config(config)
    with self._lock:
      models = {}
      for model_config in config.model_config_list.config:
        model = self._models.get(model_config.name)
        if model is None or model.config.base_path != model_config.base_path:
          model = _Model(model_config)
        model.config = model_config
        models[model_config.name] = model
      for name in set(self._models) - set(models):
        log.info('Unloading every version of model %s (removed from the config)', name)
      self._models = models

  def model_names(self) -> List[str]:
    with self._lock:
      return sorted(self._models)

  # ------------------------------------------------------------ lifecycle
  def poll(self) -> None:
    """One pass: load aspired versions, then unload the ones they replace."""
    with self._poll_lock:
      with self._lock:
        models = list(self._models.values())
      for model in models:
        try:
          self._poll_model(model)
        except Exception:  # a broken base path must not stop the other models
          log.exception('Polling model %s failed', model.config.name)

  def _poll_model(self, model: _Model) -> None:
    name, base = model.config.name, model.config.base_path
    on_disk = ready_versions(base)
    aspired = aspired_versions(model.config.model_version_policy, list(on_disk))
    if not on_disk and not model.servables:
      log.debug('No versions of servable %s found under base path %s', name, base)

    for version in sorted(aspired, reverse=True):   # newest first
      if version in model.servables:
        continue
      path = on_disk[version]
      mtime = os.path.getmtime(os.path.join(path, SAVED_MODEL_PB))
      previous = model.states.get(version)
      failures = 0
      if previous and previous.failed_mtime == mtime:   # the same copy failed before
        if (previous.failures > self.max_num_load_retries
            or time.monotonic() < previous.retry_at):
          continue
        failures = previous.failures
      self._set_state(model, version, _VersionState(State.LOADING))
      log.info('Loading servable: {name: %s version: %d} from %s', name, version, path)
      try:
        servable = load_servable(name, version, path)
      except Exception as e:  # any failure: report it, keep serving what we have
        failures += 1
        code = GRPC_CODE_BY_NUMBER.get(getattr(e, 'error_code', None), grpc.StatusCode.UNKNOWN)
        message = (f'Loading servable: {{name: {name} version: {version}}} failed: '
                   f'{type(e).__name__} (the server log has the detail)')
        retry_in = self.load_retry_interval * 2 ** (failures - 1)
        if failures <= self.max_num_load_retries:
          log.error('Loading servable: {name: %s version: %d} from %s failed (attempt %d of %d), '
                    'retrying in %.1f s: %s', name, version, path, failures,
                    self.max_num_load_retries + 1, retry_in, e)
        else:
          log.error('Loading servable: {name: %s version: %d} from %s failed %d times, giving up '
                    'until its saved_model.pb changes: %s', name, version, path, failures, e)
        self._set_state(model, version, _VersionState(
            State.END, code, message, mtime, failures, time.monotonic() + retry_in))
        continue
      with self._lock:
        model.servables[version] = servable
        model.states[version] = _VersionState(State.AVAILABLE)
      log.info('Successfully loaded servable version {name: %s version: %d}', name, version)

    # Unload what is no longer aspired, but never leave the model with nothing
    # while an aspired version failed to load (availability preserving).
    with self._lock:
      aspired_available = [v for v in aspired if v in model.servables]
      for version in sorted(model.servables):
        if version in aspired or not aspired_available:
          continue
        log.info('Unloading servable version {name: %s version: %d}', name, version)
        del model.servables[version]   # requests in flight keep their reference
        model.states[version] = _VersionState(State.END)

  def _set_state(self, model: _Model, version: int, state: _VersionState) -> None:
    with self._lock:
      model.states[version] = state

  # ------------------------------------------------------------ requests
  def _resolve(self, spec) -> Tuple[_Model, Optional[int], str]:
    """(model, version or None for latest, TF Serving's request description)."""
    name = spec.name
    model = self._models.get(name)
    which = spec.WhichOneof('version_choice')
    version = None
    if which == 'version':
      version = spec.version.value
    elif which == 'version_label':
      label = spec.version_label
      labels = model.config.version_labels if model is not None else {}
      if label not in labels:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Unrecognized servable version label: {label}')
      version = labels[label]
    described = f'Latest({name})' if version is None else f'Specific({name}, {version})'
    return model, version, described

  def servable(self, spec) -> Servable:
    """The loaded version a request with this ModelSpec is served by."""
    if not spec.name:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 'Missing model name in request.')
    with self._lock:
      model, version, described = self._resolve(spec)
      servables = model.servables if model is not None else {}
      if version is None and servables:
        return servables[max(servables)]
      if version is not None and version in servables:
        return servables[version]
    raise RequestError(grpc.StatusCode.NOT_FOUND, f'Servable not found for request: {described}')

  def status(self, spec) -> List[get_model_status_pb2.ModelVersionStatus]:
    """GetModelStatus: every version this server knows of, or the one asked for."""
    with self._lock:
      model, version, _ = self._resolve(spec)
      states = dict(model.states) if model is not None else {}
    if not states:
      raise RequestError(grpc.StatusCode.NOT_FOUND,
                         f'Could not find any versions of model {spec.name}')
    if version is not None:
      if version not in states:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f'Could not find version {version} of model {spec.name}')
      states = {version: states[version]}
    out = []
    for v in sorted(states, reverse=True):
      s = states[v]
      status = get_model_status_pb2.ModelVersionStatus(version=v, state=s.state)
      status.status.error_code = s.error_code.value[0]
      status.status.error_message = s.error_message
      out.append(status)
    return out


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
  """What `--model_name/--model_base_path` mean: one model, latest version."""
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add()
  model.name = name
  model.base_path = os.path.abspath(base_path)
  model.model_platform = 'tensorflow'
  return config
