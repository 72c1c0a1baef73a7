"""Executor code in TFX's cache key: editing a component re-runs it and what follows.

TFX keys its cache on a node's parameters, its input artifacts and the executor's
class path, never on the code behind that path. So an edit to WindowGen's
windowing, say, would leave every later run reusing the windows the old code
cut. Each custom component therefore carries one more parameter, `code_version`:
a sha256 of its executor module's source and of every project module that
module imports, transitively (`components.*`, `charrnn.*`). Changed code is a
changed parameter, a cache miss for that component, new output artifacts, and so
a re-run of everything downstream; unchanged code keeps the cache.

The value is computed when the pipeline is built (on Kubeflow: compiled into the
spec from the code that goes into the image, so the two agree).
"""

import ast
import hashlib
import importlib.util
import os
from typing import Iterable, List, Set

from tfx.types.component_spec import ExecutionParameter

PARAMETER_NAME = 'code_version'
PARAMETER = ExecutionParameter(type=str)
# Packages of this project: their modules' sources are part of the fingerprint.
_PROJECT_PACKAGES = ('components', 'charrnn')


def _source_path(module_name: str) -> str:
  spec = importlib.util.find_spec(module_name)
  if spec is None or not spec.origin or not spec.origin.endswith('.py'):
    raise ValueError(f'{module_name}: no Python source to fingerprint')
  return spec.origin


def _project_imports(path: str, module_name: str) -> Set[str]:
  """Project modules that `path` imports (absolute and `from pkg import mod` forms)."""
  with open(path, 'rb') as f:
    tree = ast.parse(f.read(), filename=path)
  package = module_name.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:   # relative import
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                        ([base] if base else []))
      # `from components import text` imports the module components.text.
      names = [base] + [f'{base}.{alias.name}' for alias in node.names]
    else:
      continue
    found.update(n for n in names if n.split('.')[0] in _PROJECT_PACKAGES and _is_module(n))
  return found


def _is_module(name: str) -> bool:
  """False for `components.artifacts.Corpus` (a class imported from a module)."""
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def modules_of(module_names: Iterable[str]) -> List[str]:
  """The given modules and every project module they import, transitively, sorted."""
  seen: Set[str] = set()
  todo = list(module_names)
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    path = _source_path(name)
    if os.path.basename(path) == '__init__.py' and name in _PROJECT_PACKAGES:
      continue   # `import components` alone runs nothing of ours that matters
    todo.extend(_project_imports(path, name) - seen)
  return sorted(seen)


def fingerprint(*module_names: str) -> str:
  """sha256 over the sources of `module_names` and their project imports."""
  digest = hashlib.sha256()
  for name in modules_of(module_names):
    digest.update(name.encode() + b'\0')
    with open(_source_path(name), 'rb') as f:
      digest.update(f.read())
    digest.update(b'\0')
  return digest.hexdigest()
