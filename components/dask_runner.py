"""Beam's Dask runner, usable from `--runner=` on a dask.distributed cluster.

Select it with Beam pipeline args (CHAR_RNN_BEAM_ARGS for the local pipeline):

  --runner=components.dask_runner.DaskRunner --dask_client_address=tcp://127.0.0.1:8786

Beam resolves a dotted `--runner` to a class (apache_beam/runners/runner.py,
`create_runner`), so no executor knows about Dask. Two faults of Beam 2.59's
`apache_beam.runners.dask.dask_runner.DaskRunner` with distributed 2024.8 are
worked around here, nothing else is changed:

* it hands *every* non-default pipeline option to `distributed.Client(...)`,
  including `--runner` itself and the `--labels` TFX adds, which the Client
  refuses (TypeError); this one passes only the Dask options;
* its result calls `client.wait_for_workers()` without the `n_workers` the
  current distributed requires (TypeError), and never closes the client; this
  one gathers the futures (re-raising a worker's exception in the caller) and
  closes the client.

What the Dask runner translates is small (Create, ParDo/Map/FlatMap,
GroupByKey, Flatten; Reshuffle is a no-op, and there are no side inputs, no
DoFn setup/teardown, no metrics), so the components that run on it use only
Create -> Map: each element is one independent unit of work that writes its
own file, and its results come back through files, not through Beam.
"""

from typing import Any, Dict, List, Sequence

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.runner import PipelineResult, PipelineState

# DaskOptions' argparse destinations: the only options the Client is given.
_CLIENT_OPTIONS = ('address', 'timeout', 'scheduler_file', 'name', 'connection_limit')


class DaskRunnerResult(PipelineResult):
  """Waits for every output future; a worker's exception is raised here."""

  def __init__(self, client, futures: Sequence[Any]):
    super().__init__(PipelineState.RUNNING)
    self._client = client
    self._futures = futures

  def wait_until_finish(self, duration=None) -> str:
    if self._state == PipelineState.DONE:
      return self._state
    try:
      self._client.gather(self._futures, errors='raise')
      self._state = PipelineState.DONE
    except BaseException:
      self._state = PipelineState.FAILED
      raise
    finally:
      self._client.close()
    return self._state

  def cancel(self) -> str:
    self._client.cancel(self._futures)
    self._client.close()
    self._state = PipelineState.CANCELLED
    return self._state

  def metrics(self):
    raise NotImplementedError('the Dask runner collects no metrics')


def client_options(options: PipelineOptions) -> Dict[str, Any]:
  """The Dask options that were set, as distributed.Client keyword arguments."""
  given = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True)
  return {k: v for k, v in given.items() if k in _CLIENT_OPTIONS and v is not None}


class DaskRunner(beam_dask.DaskRunner):
  """Beam's DaskRunner with a Client built from the Dask options only."""

  def run_pipeline(self, pipeline, options):
    import dask.distributed as ddist  # pylint: disable=g-import-not-at-top
    kwargs = client_options(options)
    if 'address' not in kwargs and 'scheduler_file' not in kwargs:
      raise ValueError(
          'the Dask runner needs --dask_client_address=tcp://HOST:PORT (or '
          '--dask_scheduler_file); start a cluster with `python -m pipeline.dask_cluster`')
    client = ddist.Client(**kwargs)
    try:
      pipeline.replace_all(beam_dask.dask_overrides())
      visitor = self.to_dask_bag_visitor()
      pipeline.visit(visitor)
      futures = client.compute(list(visitor.bags.values()))
    except BaseException:
      client.close()
      raise
    return DaskRunnerResult(client, futures)


RUNNER = f'{__name__}.{DaskRunner.__name__}'


def beam_args(address: str) -> List[str]:
  """Beam pipeline args that run a pipeline on the Dask scheduler at `address`."""
  return [f'--runner={RUNNER}', f'--dask_client_address={address}']
