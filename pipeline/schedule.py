"""Scheduled retraining on Kubeflow Pipelines: upload the compiled spec as a new
pipeline version and point a recurring run at it.

  python -m pipeline.kubeflow_runner            # compile (make kubeflow-compile)
  python -m pipeline.schedule --host=http://localhost:8080 [--cron='0 0 3 * * *']
      [--experiment=char-rnn] [--namespace=team-a] [--param name=value ...]
      [--enable-caching | --no-enable-caching] [--pipeline-root=gs://...]

Steps, with the kfp SDK's Client (KFP API v2beta1):
1. The spec's caching options are settled before uploading: CorpusIngest and
   ServedModel are uncached always (they must read the corpus and the serving
   directory every run); --enable-caching or --no-enable-caching sets every
   other task, and without either they keep what the compiler wrote
   (cached). A recurring run that references a pipeline version cannot
   override caching at submission, so the uploaded version carries it.
2. The pipeline (named after the spec's pipelineInfo, or --pipeline-name) is
   created on first upload; later uploads add a version named
   <pipeline>-<UTC time>-<spec hash>.
3. The experiment is found or created.
4. A recurring run named --job-name is created on that version with the cron
   schedule, max_concurrency (1: a run never overlaps the previous one), no
   catch-up, and the given runtime parameters; recurring runs of the same name
   in the experiment are then deleted, so the schedule is "updated" (KFP has no
   update call for recurring runs).
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # pylint: disable=g-import-not-at-top

from pipeline import configs

UNCACHED_EXECUTORS = configs.KFP_UNCACHED_EXECUTORS

# ----------------------------------------------------------------- cron
# KFP's scheduled workflows use robfig/cron with a seconds field:
# second minute hour day-of-month month day-of-week.
_CRON_FIELDS = (
    ('second', 0, 59, {}),
    ('minute', 0, 59, {}),
    ('hour', 0, 23, {}),
    ('day-of-month', 1, 31, {}),
    ('month', 1, 12, {m: i + 1 for i, m in enumerate(
        'JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC'.split())}),
    ('day-of-week', 0, 6, {d: i for i, d in enumerate('SUN MON TUE WED THU FRI SAT'.split())}),
)


class CronError(ValueError):
  pass


def _cron_value(text: str, field: str, low: int, high: int, names: Dict[str, int]) -> int:
  value = names.get(text.upper())
  if value is None:
    if not text.isdigit():
      raise CronError(f'{field}: {text!r} is not a number{" or name" if names else ""}')
    value = int(text)
  if not low <= value <= high:
    raise CronError(f'{field}: {value} is outside {low}-{high}')
  return value


def validate_cron(expression: str) -> str:
  """Returns the expression if KFP's 6-field cron accepts it; raises CronError otherwise."""
  fields = expression.split()
  if len(fields) == 5:
    raise CronError(
        f'{expression!r} has 5 fields; KFP cron has 6, seconds first '
        f'(did you mean {"0 " + expression!r}?)')
  if len(fields) != 6:
    raise CronError(f'{expression!r} has {len(fields)} fields; KFP cron has 6: '
                    'second minute hour day-of-month month day-of-week')
  for text, (field, low, high, names) in zip(fields, _CRON_FIELDS):
    for part in text.split(','):
      if part == '?' and field in ('day-of-month', 'day-of-week'):
        continue
      base, _, step = part.partition('/')
      if step and (not step.isdigit() or int(step) == 0):
        raise CronError(f'{field}: step {step!r} must be a positive number')
      if base == '*':
        continue
      start, dash, end = base.partition('-')
      first = _cron_value(start, field, low, high, names)
      if dash and _cron_value(end, field, low, high, names) < first:
        raise CronError(f'{field}: range {base!r} runs backwards')
  return expression


# ----------------------------------------------------------- the spec
def load_spec(path: str) -> Dict[str, Any]:
  with open(path) as f:
    spec = yaml.safe_load(f)
  if not isinstance(spec, dict) or 'root' not in spec or 'pipelineInfo' not in spec:
    raise ValueError(f'{path}: not a KFP PipelineSpec (compile it with '
                     'python -m pipeline.kubeflow_runner)')
  return spec


def _executor_class_paths(spec: Dict[str, Any]) -> Dict[str, Optional[str]]:
  """Task name -> the `--executor_class_path` its container runs (None if it has none)."""
  paths: Dict[str, Optional[str]] = {}
  for name, task in spec['root']['dag']['tasks'].items():
    label = spec['components'][task['componentRef']['name']]['executorLabel']
    args = spec['deploymentSpec']['executors'][label].get('container', {}).get('args', [])
    flag = '--executor_class_path'
    paths[name] = args[args.index(flag) + 1] if flag in args[:-1] else None
  return paths


def _uncached_tasks(spec: Dict[str, Any]) -> List[str]:
  return sorted(name for name, path in _executor_class_paths(spec).items()
                if path in UNCACHED_EXECUTORS)


def apply_caching(spec: Dict[str, Any], enable_caching: Optional[bool]) -> Dict[str, Any]:
  """CorpusIngest and ServedModel uncached always; the rest as asked (None: as compiled)."""
  present = set(_executor_class_paths(spec).values())
  missing = [e for e in UNCACHED_EXECUTORS if e not in present]
  if missing:
    raise ValueError(f'the spec has no task running {", ".join(missing)}: compiled from '
                     'another pipeline or an older version? (recompile with '
                     'python -m pipeline.kubeflow_runner)')
  uncached = _uncached_tasks(spec)
  for name, task in spec['root']['dag']['tasks'].items():
    if name in uncached:
      task['cachingOptions'] = {}
    elif enable_caching is not None:
      task['cachingOptions'] = {'enableCache': True} if enable_caching else {}
  return spec


_PARAMETER_TYPES = {
    'STRING': str, 'NUMBER_INTEGER': int, 'NUMBER_DOUBLE': float, 'BOOLEAN': bool,
    'LIST': list, 'STRUCT': dict,
}


def parse_params(pairs: List[str], spec: Dict[str, Any]) -> Dict[str, Any]:
  """NAME=VALUE pairs -> typed runtime parameters, checked against the spec's root inputs."""
  declared = spec['root'].get('inputDefinitions', {}).get('parameters', {})
  params: Dict[str, Any] = {}
  for pair in pairs:
    name, sep, text = pair.partition('=')
    if not sep:
      raise ValueError(f'--param {pair!r}: expected NAME=VALUE')
    if name not in declared:
      raise ValueError(f'--param {name}: the pipeline has no such parameter '
                       f'(it has: {", ".join(sorted(declared)) or "none"})')
    kind = _PARAMETER_TYPES.get(declared[name].get('parameterType'), str)
    if kind is str:
      params[name] = text
    elif kind is bool:
      params[name] = text.lower() in ('1', 'true', 'yes')
    elif kind in (int, float):
      params[name] = kind(text)
    else:
      params[name] = json.loads(text)
  return params


def version_name(pipeline_name: str, spec_text: str,
                 now: Optional[datetime.datetime] = None) -> str:
  now = now or datetime.datetime.now(datetime.timezone.utc)
  digest = hashlib.sha256(spec_text.encode()).hexdigest()[:8]
  return f'{pipeline_name}-{now:%Y%m%d-%H%M%S}-{digest}'


# ---------------------------------------------------------- scheduling
def schedule(host: str, spec_path: str, cron: str, experiment: str,
             job_name: Optional[str] = None, namespace: Optional[str] = None,
             pipeline_name: Optional[str] = None, version: Optional[str] = None,
             params: Optional[List[str]] = None, enable_caching: Optional[bool] = None,
             pipeline_root: Optional[str] = None, max_concurrency: int = 1,
             service_account: Optional[str] = None,
             client: Optional[Any] = None) -> Dict[str, Any]:
  """Uploads the spec as a new version and (re)creates the recurring run; returns ids."""
  import kfp  # pylint: disable=g-import-not-at-top
  validate_cron(cron)
  if max_concurrency < 1:
    raise ValueError('max_concurrency must be at least 1')
  spec = apply_caching(load_spec(spec_path), enable_caching)
  runtime_params = parse_params(params or [], spec)
  pipeline_name = pipeline_name or spec['pipelineInfo']['name']
  job_name = job_name or f'{pipeline_name}-retraining'
  spec_text = yaml.safe_dump(spec, sort_keys=True)
  version = version or version_name(pipeline_name, spec_text)

  if client is None:
    client = kfp.Client(host=host, namespace=namespace or 'kubeflow')
  with tempfile.TemporaryDirectory() as tmp:
    upload_path = os.path.join(tmp, f'{version}.yaml')
    with open(upload_path, 'w') as f:
      f.write(spec_text)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
      pipeline = client.upload_pipeline(
          upload_path, pipeline_name=pipeline_name,
          description='Char-RNN TFX: ingest, vocabulary, windows, train, gate, push',
          namespace=namespace or None)
      pipeline_id = pipeline.pipeline_id
      # The first upload creates the pipeline with one version of the same name.
      versions = client.list_pipeline_versions(
          pipeline_id, page_size=1, sort_by='created_at desc').pipeline_versions
      version_id, version = versions[0].pipeline_version_id, versions[0].display_name
    else:
      version_id = client.upload_pipeline_version(
          upload_path, version, pipeline_id=pipeline_id,
          description=f'compiled spec {os.path.basename(spec_path)}').pipeline_version_id

  experiment_id = client.create_experiment(
      experiment, namespace=namespace or None).experiment_id
  name_filter = json.dumps({'predicates': [
      {'operation': 'EQUALS', 'key': 'display_name', 'stringValue': job_name}]})
  previous = client.list_recurring_runs(
      experiment_id=experiment_id, page_size=100, filter=name_filter).recurring_runs or []
  recurring = client.create_recurring_run(
      experiment_id=experiment_id, job_name=job_name,
      description=f'Scheduled retraining of {pipeline_name} ({version})',
      cron_expression=cron, max_concurrency=max_concurrency, no_catchup=True,
      params=runtime_params, pipeline_id=pipeline_id, version_id=version_id,
      enabled=True, pipeline_root=pipeline_root, service_account=service_account)
  replaced = []
  for old in previous:
    if old.recurring_run_id != recurring.recurring_run_id:
      client.delete_recurring_run(old.recurring_run_id)
      replaced.append(old.recurring_run_id)
  return {'pipeline_id': pipeline_id, 'pipeline_version_id': version_id,
          'pipeline_version': version, 'experiment_id': experiment_id,
          'recurring_run_id': recurring.recurring_run_id, 'replaced': replaced,
          'cron': cron, 'uncached_tasks': _uncached_tasks(spec)}


def _parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m pipeline.schedule', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--host', default=configs.KFP_HOST,
                      help='KFP API endpoint (default %(default)s)')
  parser.add_argument('--namespace', default=configs.KFP_NAMESPACE or None,
                      help='user namespace of a multi-user KFP')
  parser.add_argument('--pipeline-spec', default=configs.KFP_PIPELINE_SPEC,
                      help='compiled PipelineSpec YAML (default %(default)s)')
  parser.add_argument('--pipeline-name', default=None,
                      help='KFP pipeline name (default: the spec\'s name)')
  parser.add_argument('--version-name', default=None,
                      help='pipeline version name (default: <pipeline>-<UTC time>-<spec hash>)')
  parser.add_argument('--experiment', default=configs.KFP_EXPERIMENT)
  parser.add_argument('--job-name', default=None,
                      help='recurring run name (default: <pipeline>-retraining)')
  parser.add_argument('--cron', default=configs.KFP_SCHEDULE_CRON, type=_cron_arg,
                      help='6-field cron, seconds first (default %(default)r)')
  parser.add_argument('--max-concurrency', type=int, default=1)
  parser.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                      help='runtime parameter of the pipeline (repeatable)')
  parser.add_argument('--pipeline-root', default=None,
                      help='runtime pipeline root (default: the spec\'s defaultPipelineRoot)')
  parser.add_argument('--enable-caching', action=argparse.BooleanOptionalAction, default=None,
                      help='cache every task but CorpusIngest and ServedModel '
                           '(default: as compiled)')
  parser.add_argument('--service-account', default=None)
  return parser.parse_args(argv)


def _cron_arg(text: str) -> str:
  try:
    return validate_cron(text)
  except CronError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  result = schedule(
      host=args.host, spec_path=args.pipeline_spec, cron=args.cron,
      experiment=args.experiment, job_name=args.job_name, namespace=args.namespace,
      pipeline_name=args.pipeline_name, version=args.version_name, params=args.param,
      enable_caching=args.enable_caching, pipeline_root=args.pipeline_root,
      max_concurrency=args.max_concurrency, service_account=args.service_account)
  print(json.dumps(result, indent=2))
  return result


if __name__ == '__main__':
  main()
