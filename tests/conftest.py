"""Shared fixtures: the real corpus, and one real tiny pipeline run per session.

`tiny_pipeline` runs the whole pipeline (LocalDagRunner, SQLite ML Metadata,
Beam DirectRunner) once with the `tiny` preset on the real corpus; the
end-to-end, serving and Kubeflow tests all read what it produced.

`make test` runs on two pytest-xdist workers (pytest.ini) with one xdist group
per test module, so module fixtures are made once; the modules that use
`tiny_pipeline` share one group, so one worker makes the run once while the
other takes the rest of the suite.
"""

import dataclasses
import os
import warnings

import pytest

warnings.filterwarnings('ignore', category=DeprecationWarning)
warnings.filterwarnings('ignore', category=FutureWarning)

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_PATH = os.path.join(REPO_DIR, 'data', 'tinyshakespeare.txt')   # the embedded default


@pytest.hookimpl(wrapper=True)   # around xdist's own hook, which reads the marks
def pytest_collection_modifyitems(items):
  # A module's tests stay on one worker (its module fixtures are made once);
  # every module with a `tiny_pipeline` user joins one group, so the session's
  # run is made once too.
  def module(item):
    return item.nodeid.split('::')[0]
  shared = {module(i) for i in items if 'tiny_pipeline' in getattr(i, 'fixturenames', ())}
  for item in items:
    name = module(item)
    if item.get_closest_marker('xdist_group') is None:   # a test's own group stands
      item.add_marker(pytest.mark.xdist_group('tiny_pipeline' if name in shared else name))
  return (yield)


@dataclasses.dataclass
class PipelineRun:
  output_dir: str
  pipeline_root: str
  metadata_path: str
  serving_model_dir: str   # the Pusher's base: <this>/char_rnn/<version>/

  @property
  def model_base_path(self) -> str:
    return os.path.join(self.serving_model_dir, 'char_rnn')


@pytest.fixture(scope='session')
def corpus_path() -> str:
  if not os.path.exists(CORPUS_PATH):
    pytest.fail(f'the embedded corpus is missing: {CORPUS_PATH}')
  return CORPUS_PATH


def run_local_pipeline(output_dir: str, corpus_sources, preset: str = 'tiny',
                       overrides: str = '', warm_start: bool = False) -> PipelineRun:
  """Runs the real pipeline through LocalDagRunner into `output_dir`."""
  from tfx import v1 as tfx
  from pipeline import configs, local_runner
  tfx.orchestration.LocalDagRunner().run(local_runner.build(
      output_dir, preset, list(corpus_sources), overrides, warm_start))
  return PipelineRun(output_dir=output_dir,
                     pipeline_root=configs.pipeline_root(output_dir),
                     metadata_path=configs.metadata_path(output_dir),
                     serving_model_dir=configs.serving_model_dir(output_dir))


@pytest.fixture(scope='session')
def tiny_pipeline(tmp_path_factory, corpus_path) -> PipelineRun:
  """One real tiny pipeline run on the real corpus, shared by the session."""
  return run_local_pipeline(str(tmp_path_factory.mktemp('tiny_pipeline')), [corpus_path])
