"""Shared fixtures: the real corpus, and one real tiny pipeline run per session.

`tiny_pipeline` runs the whole pipeline (LocalDagRunner, SQLite ML Metadata,
Beam DirectRunner) once with the `tiny` preset on the real corpus; the
end-to-end, serving and Kubeflow tests all read what it produced.

`make test` runs on two pytest-xdist workers (pytest.ini): every test that
uses `tiny_pipeline` is put in one xdist group, so one worker makes the run
once and the other takes the rest of the suite meanwhile.
"""

import dataclasses
import os
import warnings

import pytest

warnings.filterwarnings('ignore', category=DeprecationWarning)
warnings.filterwarnings('ignore', category=FutureWarning)

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_PATH = os.path.join(REPO_DIR, 'data', 'tinyshakespeare.txt')   # the embedded default


def pytest_collection_modifyitems(items):
  for item in items:
    if 'tiny_pipeline' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.xdist_group('tiny_pipeline'))


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
