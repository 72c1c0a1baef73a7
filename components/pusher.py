"""Pusher: TFX's Pusher, but a version appears in the serving directory only when complete.

TFX's filesystem Pusher copies the SavedModel file by file straight into
`<base>/<version>/`, `saved_model.pb` last. Killed mid-copy it leaves a version
directory that looks like a model and is not one (a truncated `saved_model.pb`,
or variables without a graph); the next run's ServedModel, warm start and gate
then take it for the served model. This executor keeps TFX's component spec,
blessing check and output artifact (`pushed`, `pushed_destination`,
`pushed_version` on a PushedModel, and the archive copy in its URI), so the
Kubeflow spec, downstream consumers and ML Metadata see the same thing, and
replaces only the copy:

* On a local (POSIX) filesystem the model is copied into a temporary sibling,
  `<base>/.tmp-<version>-<host>-<pid>-<random>/` (a name that TF Serving and
  serving.server ignore: not [0-9]+), every file fsynced, then renamed to
  `<base>/<version>` in one step and the base directory fsynced. A version
  directory therefore never exists half-written; a kill leaves only a
  temporary directory, which the next push deletes (that of a push still
  running, on this host, is left alone).
* On object stores (gs://) there is no directory rename; each object appears
  whole when its upload completes, so the files are written in place with
  `saved_model.pb` last, as TFX does, and `is_complete_version` below is what
  keeps a half-copied version from being taken for a model.

This module owns the serving directory's layout: what a version directory is
called (`[0-9]+`; `'²'.isdigit()` is True in Python, so no `isdigit`), which
versions are complete, and the newest complete one. ServedModel (and through
it warm start and the gate's baseline) read versions only through it.

The version number is the push's UNIX time, as TFX's AUTO versioning, but
always above the newest version already there, so "newest" stays the last
push even when the clock goes back or two pushes fall in one second.
"""

import os
import re
import shutil
import socket
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import saved_model_pb2
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components import code_version

SAVED_MODEL_PB = 'saved_model.pb'
VARIABLES_PREFIX = os.path.join('variables', 'variables')
TMP_PREFIX = '.tmp-'
_VERSION_DIR = re.compile(r'[0-9]+')
# A temporary directory from another host is removed only when this old: it may
# belong to a push still running there (on this host the pid says).
_FOREIGN_TMP_MAX_AGE_S = 3600


# --------------------------------------------------------------- the layout
def is_version_name(name: str) -> bool:
  """A version directory's name: plain ASCII digits."""
  return bool(_VERSION_DIR.fullmatch(name))


def version_names(base_dir: str) -> List[Tuple[int, str]]:
  """(version, path) of every [0-9]+ entry under `base_dir`, newest first.

  Other names are skipped with one log line each (TF Serving ignores them too);
  temporary push directories are skipped silently.
  """
  if not tf.io.gfile.isdir(base_dir):
    return []
  out = []
  for entry in tf.io.gfile.listdir(base_dir):
    name = entry.rstrip('/')
    if is_version_name(name):
      out.append((int(name), os.path.join(base_dir, name)))
    elif not name.startswith(TMP_PREFIX):
      logging.warning('%s: ignoring %r: a version directory is named with ASCII digits only',
                      base_dir, name)
  return sorted(out, reverse=True)


def incomplete_reason(version_dir: str) -> Optional[str]:
  """Why `version_dir` is not a complete, loadable SavedModel; None when it is.

  Cheaper than loading it (no graph is built): saved_model.pb must parse and
  hold a MetaGraph with signatures, and every variable must read back from the
  checkpoint (the reader checks each tensor's CRC, so a truncated or corrupted
  variables file fails here).
  """
  pb = os.path.join(version_dir, SAVED_MODEL_PB)
  if not tf.io.gfile.exists(pb):
    return f'no {SAVED_MODEL_PB}'
  try:
    with tf.io.gfile.GFile(pb, 'rb') as f:
      saved_model = saved_model_pb2.SavedModel.FromString(f.read())
  except Exception as e:  # pylint: disable=broad-except  (DecodeError and I/O errors)
    return f'{SAVED_MODEL_PB} does not parse ({type(e).__name__}: {e})'
  if not saved_model.meta_graphs or not saved_model.meta_graphs[0].signature_def:
    return f'{SAVED_MODEL_PB} holds no MetaGraph with signatures (truncated?)'
  prefix = os.path.join(version_dir, VARIABLES_PREFIX)
  if not tf.io.gfile.exists(prefix + '.index'):
    return 'no variables/variables.index'
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_dtype_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.*: truncated, bad CRC)
    return f'variables do not read back ({type(e).__name__}: {str(e).splitlines()[0][:200]})'
  return None


def is_complete_version(version_dir: str) -> bool:
  return incomplete_reason(version_dir) is None


def latest_complete_version(base_dir: str) -> Optional[str]:
  """The newest version directory that is complete and loadable, or None.

  Every newer version that is not is skipped with one log line saying why.
  """
  for _, path in version_names(base_dir):
    reason = incomplete_reason(path)
    if reason is None:
      return path
    logging.warning('skipping version %s: %s', path, reason)
  return None


# ------------------------------------------------------------------ the push
def copy_plan(model_dir: str) -> List[str]:
  """The model's files (relative paths) in copy order: saved_model.pb last."""
  files = []
  for root, _, names in tf.io.gfile.walk(model_dir):
    for name in names:
      files.append(os.path.relpath(os.path.join(root, name), model_dir))
  files.sort(key=lambda rel: (rel == SAVED_MODEL_PB, rel))
  return files


def _is_local(path: str) -> bool:
  return '://' not in path


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _copy_file(src: str, dst: str, local: bool) -> None:
  if not local:
    io_utils.copy_file(src, dst, overwrite=True)
    return
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with tf.io.gfile.GFile(src, 'rb') as fin, open(dst, 'wb') as fout:
    shutil.copyfileobj(fin, fout, 1 << 20)
    fout.flush()
    os.fsync(fout.fileno())


def _tmp_owner_alive(name: str) -> bool:
  """For `.tmp-<version>-<host>-<pid>-<hex>`: is that push still running here?"""
  parts = name[len(TMP_PREFIX):].split('-')
  if len(parts) < 4 or not parts[-2].isascii() or not parts[-2].isdigit():
    return False
  host, pid = '-'.join(parts[1:-2]), int(parts[-2])
  if host != socket.gethostname() or pid == os.getpid():
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_tmp_dirs(base_dir: str) -> List[str]:
  """Deletes what killed pushes left behind; returns the paths removed."""
  removed = []
  if not tf.io.gfile.isdir(base_dir):
    return removed
  for entry in tf.io.gfile.listdir(base_dir):
    name = entry.rstrip('/')
    if not name.startswith(TMP_PREFIX):
      continue
    path = os.path.join(base_dir, name)
    host = name[len(TMP_PREFIX):].split('-')[1:-2]
    if '-'.join(host) != socket.gethostname():
      try:
        age = time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9
      except tf.errors.OpError:
        age = 0
      if age < _FOREIGN_TMP_MAX_AGE_S:
        continue
    elif _tmp_owner_alive(name):
      continue
    logging.info('Pusher: removing %s, left by a push that did not finish', path)
    tf.io.gfile.rmtree(path)
    removed.append(path)
  return removed


def next_version(base_dir: str) -> int:
  """The push's UNIX time, or one above the newest version name already there."""
  newest = max((v for v, _ in version_names(base_dir)), default=0)
  return max(int(time.time()), newest + 1)


def push(model_dir: str, base_dir: str,
         on_file_copied: Optional[Callable[[str], None]] = None) -> Tuple[int, str]:
  """Copies the SavedModel in `model_dir` to a new version under `base_dir`.

  Returns (version, version_dir). `on_file_copied(relative_path)` is called after
  each file is in place (progress reporting; the fault tests kill there).
  """
  if incomplete_reason(model_dir) is not None:
    raise ValueError(f'refusing to push {model_dir}: {incomplete_reason(model_dir)}')
  local = _is_local(base_dir)
  tf.io.gfile.makedirs(base_dir)
  remove_stale_tmp_dirs(base_dir)
  version = next_version(base_dir)
  final = os.path.join(base_dir, str(version))
  files = copy_plan(model_dir)
  if not local:   # object store: each object appears whole; saved_model.pb last
    for rel in files:
      _copy_file(os.path.join(model_dir, rel), os.path.join(final, rel), local)
      if on_file_copied:
        on_file_copied(rel)
    return version, final
  tmp = os.path.join(base_dir, f'{TMP_PREFIX}{version}-{socket.gethostname()}-'
                               f'{os.getpid()}-{uuid.uuid4().hex[:8]}')
  os.makedirs(tmp)
  for rel in files:
    _copy_file(os.path.join(model_dir, rel), os.path.join(tmp, rel), local)
    if on_file_copied:
      on_file_copied(rel)
  for root, dirs, _ in os.walk(tmp, topdown=False):
    for d in dirs:
      _fsync_dir(os.path.join(root, d))
  _fsync_dir(tmp)
  os.rename(tmp, final)      # atomic; fails (and keeps both) if `final` appeared meanwhile
  _fsync_dir(base_dir)
  return version, final


# ------------------------------------------------------------ the component
class PusherSpec(standard_component_specs.PusherSpec):
  PARAMETERS = {**standard_component_specs.PusherSpec.PARAMETERS,
                code_version.PARAMETER_NAME: code_version.PARAMETER}


class Executor(tfx_pusher_executor.Executor):
  """TFX's Pusher executor with an atomic filesystem push (see the module doc)."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return
    model_path = self.GetModelPath(input_dict)
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    if destination.WhichOneof('destination') != 'filesystem':
      raise NotImplementedError(f'push destination {destination.WhichOneof("destination")}: '
                                'this Pusher writes to a filesystem only')
    versioning = destination.filesystem.versioning
    if versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
      raise NotImplementedError(f'versioning {versioning}: only AUTO / UNIX_TIMESTAMP')
    version, serving_path = push(model_path, destination.filesystem.base_directory)
    logging.info('Pusher: model version %d written to serving path %s', version, serving_path)
    io_utils.copy_dir(model_path, model_push.uri)   # TFX's archive copy in the artifact
    self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))


class Pusher(base_component.BaseComponent):
  """Pushes a blessed Model to `<base_directory>/<version>/`, atomically."""

  SPEC_CLASS = PusherSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
               push_destination: pusher_pb2.PushDestination):
    super().__init__(spec=PusherSpec(
        code_version=code_version.fingerprint(__name__),
        model=model, model_blessing=model_blessing,
        push_destination=push_destination,
        pushed_model=types.Channel(type=standard_artifacts.PushedModel)))
