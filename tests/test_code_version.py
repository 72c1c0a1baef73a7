"""The code_version parameter: which edits change which component's cache key."""

import json
import os
import shutil
import subprocess
import sys

from components import code_version

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ('components.corpus_ingest', 'components.vocabulary_gen', 'components.window_gen',
              'components.evaluation_gate', 'components.served_model')


_BEFORE_AND_AFTER_AN_EDIT = """
import json, sys
from components import code_version as c
modules = json.loads(sys.argv[2])
before = {m: c.fingerprint(m) for m in modules}
assert before == {m: c.fingerprint(m) for m in modules}   # stable
with open(sys.argv[1], 'a') as f:
  f.write('\\n# an edit to the Examples format\\n')
print(json.dumps([before, {m: c.fingerprint(m) for m in modules}]))
"""


def test_dependencies_are_followed_through_project_imports():
  modules = code_version.modules_of(['components.window_gen'])
  assert 'components.examples_format' in modules and 'components.text' in modules
  assert not any(m.startswith(('tfx', 'tensorflow', 'apache_beam')) for m in modules)
  # A class imported from a module is not mistaken for a module.
  assert 'components.artifacts.Corpus' not in modules


def test_editing_a_shared_module_changes_only_its_users_fingerprints(tmp_path):
  root = str(tmp_path)
  shutil.copytree(os.path.join(REPO_DIR, 'components'), os.path.join(root, 'components'),
                  ignore=shutil.ignore_patterns('__pycache__'))
  # A fresh interpreter importing `components` from the copy, which it then edits.
  out = subprocess.run(
      [sys.executable, '-c', _BEFORE_AND_AFTER_AN_EDIT,
       os.path.join(root, 'components', 'examples_format.py'), json.dumps(COMPONENTS)],
      cwd=root, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root))
  before, after = json.loads(out.stdout.strip().splitlines()[-1])
  changed = {m for m in COMPONENTS if before[m] != after[m]}
  # WindowGen, CorpusIngest (size check) and the gate read the format; the others do not.
  assert changed == {'components.window_gen', 'components.corpus_ingest',
                     'components.evaluation_gate'}


def test_every_custom_component_carries_its_code_version():
  from pipeline import configs, pipeline as pipeline_lib
  p = pipeline_lib.create_pipeline(
      pipeline_name='t', pipeline_root='/tmp/unused', corpus_sources=['/nonexistent.txt'],
      preset=configs.get_preset('tiny', ''), trainer_run_fn=configs.TRAINER_RUN_FN,
      serving_model_dir='/tmp/unused-serving', corpus_fingerprint='x',
      served_model_fingerprint='y')
  for component in p.components:
    if component.__module__.startswith('components.'):
      if component.id == 'CharRnnTrainer':
        config = json.loads(component.exec_properties['custom_config'])
        assert len(config['code_fingerprint']) == 64
      else:
        assert component.exec_properties[code_version.PARAMETER_NAME] == \
            code_version.fingerprint(component.__module__)
