"""`python -m serving.server` as a real subprocess on loopback (this module holds no tests).

Used where a test needs the server exactly as a user starts it (the playground in
a browser, a rollback seen by a running server): its own process, its own ports,
polling the base path for versions as TF Serving does.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def get_json(url: str, timeout: float = 10):
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return json.loads(response.read())


def available_versions(url: str, model: str = 'char_rnn'):
  """The versions the server reports AVAILABLE (empty while it cannot answer)."""
  try:
    states = get_json(f'{url}/v1/models/{model}')['model_version_status']
  except (OSError, ValueError, KeyError):
    return set()
  return {int(s['version']) for s in states if s['state'] == 'AVAILABLE'}


def wait_for(predicate, what: str, timeout: float = 120, process=None, log_path=None):
  deadline = time.monotonic() + timeout
  while not predicate():
    if process is not None and process.poll() is not None:
      raise AssertionError(f'server exited while waiting for {what}: {_tail(log_path)}')
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out waiting for {what}: {_tail(log_path)}')
    time.sleep(0.25)


def _tail(log_path) -> str:
  if not log_path or not os.path.exists(log_path):
    return ''
  with open(log_path, encoding='utf-8', errors='replace') as f:
    return f.read()[-3000:]


@contextlib.contextmanager
def server(base_path: str, poll_seconds: int = 1, model: str = 'char_rnn'):
  """Yields (rest_url, process) once a version is AVAILABLE; stops the server after."""
  rest_port = free_port()
  log = tempfile.NamedTemporaryFile(prefix='serving-', suffix='.log', delete=False)
  process = subprocess.Popen(
      [sys.executable, '-m', 'serving.server', '--host=127.0.0.1', f'--port={free_port()}',
       f'--rest_api_port={rest_port}', f'--model_name={model}', f'--model_base_path={base_path}',
       f'--file_system_poll_wait_seconds={poll_seconds}'],
      cwd=REPO_DIR, stdout=log, stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{rest_port}'
  try:
    wait_for(lambda: available_versions(url, model), 'a version to be AVAILABLE',
             process=process, log_path=log.name)
    yield url, process
  finally:
    if process.poll() is None:
      process.terminate()
      try:
        process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
    os.remove(log.name)
