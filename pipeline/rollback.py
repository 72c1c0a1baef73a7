"""Serve an earlier pushed version again, the way TF Serving allows: move newer versions aside.

  python -m pipeline.rollback --version=<v>   # make rollback VERSION=<v>
  python -m pipeline.rollback --undo          # make rollforward

TF Serving (and serving.server) serve the newest complete version under the
model's base path (version policy `latest { num_versions: 1 }`, the default). A
rollback to <v> therefore moves every newer version directory out of the base
path, with os.rename, into a sibling directory the server does not scan:

  <serving_model_dir>/char_rnn/<v>/                 served again
  <serving_model_dir>/char_rnn.rolled_back/<newer>/ moved aside, intact
  <serving_model_dir>/char_rnn.rollbacks.json       the log: every rollback and undo

Each rename is atomic on one filesystem. Newer versions move oldest first, so the
server goes straight from the newest to <v> (never through a version in between);
an undo moves them back newest first, so it goes straight back. No version's
files are copied or deleted. The pipeline's ServedModel component picks the newest
complete version under the base path, so the next run's gate compares against
the version served after a rollback, and a new push (a newer version number)
is served over it.

Only complete versions (saved_model.pb present) are moved: a newer version still
being copied by a Pusher stops the rollback with an error instead.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import configs  # pylint: disable=g-import-not-at-top

SAVED_MODEL_PB = 'saved_model.pb'
ASIDE_SUFFIX = '.rolled_back'
LOG_SUFFIX = '.rollbacks.json'


class RollbackError(Exception):
  """A rollback or undo that cannot be done; nothing was moved."""


def model_base(output_dir: str = configs.OUTPUT_DIR) -> str:
  return os.path.join(configs.serving_model_dir(output_dir), configs.SERVING_MODEL_NAME)


def aside_dir(base: str) -> str:
  return base.rstrip('/') + ASIDE_SUFFIX


def log_path(base: str) -> str:
  return base.rstrip('/') + LOG_SUFFIX


def versions(directory: str) -> Dict[int, bool]:
  """{version: complete} of the numeric version directories in `directory`."""
  try:
    entries = os.listdir(directory)
  except FileNotFoundError:
    return {}
  return {int(e): os.path.isfile(os.path.join(directory, e, SAVED_MODEL_PB))
          for e in entries if e.isdigit() and os.path.isdir(os.path.join(directory, e))}


def served_version(base: str) -> Optional[int]:
  """What TF Serving's default policy serves: the newest complete version."""
  complete = [v for v, ok in versions(base).items() if ok]
  return max(complete) if complete else None


def read_log(base: str) -> List[Dict[str, Any]]:
  try:
    with open(log_path(base), encoding='utf-8') as f:
      entries = json.load(f)
  except FileNotFoundError:
    return []
  except ValueError as e:
    raise RollbackError(f'{log_path(base)} is not valid JSON ({e}); fix or remove it') from None
  if not isinstance(entries, list):
    raise RollbackError(f'{log_path(base)} should hold a JSON list of entries')
  return entries


def _write_log(base: str, entries: List[Dict[str, Any]]) -> None:
  path = log_path(base)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.rollbacks-')
  with os.fdopen(fd, 'w', encoding='utf-8') as f:
    json.dump(entries, f, indent=1)
  os.chmod(tmp, 0o644)
  os.replace(tmp, path)


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def pending_rollback(base: str) -> Optional[Dict[str, Any]]:
  """The newest rollback not undone yet (what --undo reverses), or None."""
  undone = set()
  for entry in read_log(base):
    if entry.get('action') == 'undo':
      undone.add(entry.get('undoes'))
  for i, entry in reversed(list(enumerate(read_log(base)))):
    if entry.get('action') == 'rollback' and i not in undone:
      return dict(entry, index=i)
  return None


def rollback(base: str, version: int) -> Dict[str, Any]:
  """Makes `version` the served one by moving every newer version aside; returns the entry."""
  on_disk = versions(base)
  aside = aside_dir(base)
  if version not in on_disk:
    if version in versions(aside):
      raise RollbackError(f'version {version} is itself rolled back (in {aside}); '
                          'undo that rollback first (make rollforward)')
    listed = ', '.join(str(v) for v in sorted(on_disk)) or 'none'
    raise RollbackError(f'no version {version} under {base} (versions there: {listed})')
  if not on_disk[version]:
    raise RollbackError(f'version {version} has no {SAVED_MODEL_PB}: it is incomplete '
                        'and cannot be served')
  newer = sorted(v for v in on_disk if v > version)
  if not newer:
    raise RollbackError(f'version {version} is already the newest version under {base}; '
                        'nothing to roll back')
  incomplete = [v for v in newer if not on_disk[v]]
  if incomplete:
    raise RollbackError(f'version(s) {incomplete} under {base} are still being copied '
                        '(no saved_model.pb yet); wait for the push to finish')
  clash = [v for v in newer if os.path.exists(os.path.join(aside, str(v)))]
  if clash:
    raise RollbackError(f'{aside} already holds version(s) {clash}; resolve that by hand')
  os.makedirs(aside, exist_ok=True)
  entries = read_log(base)
  entry = {'action': 'rollback', 'time': _now(), 'version': version,
           'served_before': max(newer), 'moved': [], 'to': aside}
  entries.append(entry)
  for v in newer:   # oldest first: the server never serves a version in between
    os.rename(os.path.join(base, str(v)), os.path.join(aside, str(v)))
    entry['moved'].append(v)
    _write_log(base, entries)   # the log always says what has moved
  return entry


def undo(base: str) -> Dict[str, Any]:
  """Moves back the versions the last rollback moved aside; returns the undo entry."""
  pending = pending_rollback(base)
  if pending is None:
    raise RollbackError(f'no rollback to undo (log: {log_path(base)})')
  aside = aside_dir(base)
  moved = [int(v) for v in pending.get('moved', [])]
  missing = [v for v in moved if not os.path.isdir(os.path.join(aside, str(v)))]
  if missing:
    raise RollbackError(f'version(s) {missing} are no longer in {aside}; '
                        'the rollback cannot be undone automatically')
  clash = [v for v in moved if os.path.exists(os.path.join(base, str(v)))]
  if clash:
    raise RollbackError(f'{base} already holds version(s) {clash}; resolve that by hand')
  entries = read_log(base)
  entry = {'action': 'undo', 'time': _now(), 'undoes': pending['index'], 'moved': []}
  entries.append(entry)
  for v in sorted(moved, reverse=True):   # newest first: straight back to the newest
    os.rename(os.path.join(aside, str(v)), os.path.join(base, str(v)))
    entry['moved'].append(v)
    _write_log(base, entries)
  entry['served_after'] = served_version(base)
  _write_log(base, entries)
  return entry


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output-dir', default=configs.OUTPUT_DIR)
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument('--version', type=int, help='the version to serve again')
  which.add_argument('--undo', action='store_true', help='undo the last rollback')
  args = parser.parse_args(argv)
  base = model_base(args.output_dir)
  before = served_version(base)
  try:
    if args.undo:
      entry = undo(base)
      print(f'Undid the rollback: moved back {", ".join(map(str, entry["moved"]))}; '
            f'served now: {served_version(base)} (was {before}).')
    else:
      entry = rollback(base, args.version)
      print(f'Rolled back: moved {", ".join(map(str, entry["moved"]))} to {entry["to"]}; '
            f'served now: {served_version(base)} (was {before}). '
            'Undo with `make rollforward`.')
  except RollbackError as e:
    print(f'rollback: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
