"""Runs a compiled KFP v2 PipelineSpec's container tasks on this machine, one
subprocess per task, the way a KFP pod runs them.

For each task, in dependency order, it does what KFP's driver and launcher do
for a TFX container: build the ExecutorInput (parameter values from the task's
constants; input artifacts with the upstream task's output metadata; output
artifacts with URIs under the pipeline root; an output file), substitute it
for the `{{$}}` placeholder in the container args, and exec the container's
command (`python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
...`) with this interpreter standing in for the image's `python`. The output
artifacts' metadata is read back from the ExecutorOutput file the entrypoint
writes, exactly what KFP records and hands downstream.

Only what our spec uses is supported: container executors, constant
parameters, and task-output artifacts.
"""

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

EXECUTOR_INPUT_PLACEHOLDER = '{{$}}'


class TaskFailed(RuntimeError):
  pass


def task_order(spec: Dict[str, Any]) -> List[str]:
  tasks = spec['root']['dag']['tasks']
  done: List[str] = []
  while len(done) < len(tasks):
    ready = sorted(name for name, task in tasks.items() if name not in done
                   and all(dep in done for dep in task.get('dependentTasks', [])))
    if not ready:
      raise ValueError(f'dependency cycle among {sorted(set(tasks) - set(done))}')
    done.extend(ready)
  return done


def _runtime_artifact(name: str, uri: str, instance_schema: str,
                      metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  return {'name': name, 'uri': uri, 'type': {'instanceSchema': instance_schema},
          'metadata': metadata or {}}


def executor_input(spec: Dict[str, Any], task_name: str, run_root: str,
                   produced: Dict[str, Dict[str, Dict[str, Any]]]) -> Dict[str, Any]:
  """The ExecutorInput KFP would give `task_name`; `produced` holds upstream outputs."""
  task = spec['root']['dag']['tasks'][task_name]
  component = spec['components'][task['componentRef']['name']]
  inputs = task.get('inputs', {})
  parameters = {}
  for key, value in inputs.get('parameters', {}).items():
    parameters[key] = value['runtimeValue']['constant']
  artifacts = {}
  for key, ref in inputs.get('artifacts', {}).items():
    source = ref['taskOutputArtifact']
    artifacts[key] = {'artifacts': [produced[source['producerTask']][source['outputArtifactKey']]]}
  task_root = os.path.join(run_root, task_name)
  outputs = {}
  for key, definition in component.get('outputDefinitions', {}).get('artifacts', {}).items():
    outputs[key] = {'artifacts': [_runtime_artifact(
        name=f'{task_name}/{key}', uri=os.path.join(task_root, key),
        instance_schema=definition['artifactType']['instanceSchema'])]}
  return {'inputs': {'parameterValues': parameters, 'artifacts': artifacts},
          'outputs': {'artifacts': outputs,
                      'outputFile': os.path.join(task_root, 'executor_output.json')}}


def run_task(spec: Dict[str, Any], task_name: str, run_root: str,
             produced: Dict[str, Dict[str, Dict[str, Any]]],
             env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
             timeout: float = 600) -> Dict[str, Dict[str, Any]]:
  """Runs one task's container command; returns its output artifacts as KFP records them."""
  task = spec['root']['dag']['tasks'][task_name]
  component = spec['components'][task['componentRef']['name']]
  container = spec['deploymentSpec']['executors'][component['executorLabel']]['container']
  invocation = executor_input(spec, task_name, run_root, produced)
  for output in invocation['outputs']['artifacts'].values():
    # Object stores (gs://) need no directories; on a local filesystem the
    # output URI must exist before an executor writes files into it.
    os.makedirs(output['artifacts'][0]['uri'], exist_ok=True)
  command = list(container['command'])
  if command[0] != 'python':
    raise ValueError(f'{task_name}: expected a `python ...` container command, got {command}')
  command[0] = sys.executable
  args = [json.dumps(invocation) if a == EXECUTOR_INPUT_PLACEHOLDER else a
          for a in container['args']]
  result = subprocess.run(command + args, env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
  if result.returncode != 0:
    raise TaskFailed(f'{task_name} exited {result.returncode}:\n{result.stderr[-6000:]}')
  with open(invocation['outputs']['outputFile']) as f:
    executor_output = json.load(f)
  recorded = {}
  for key, declared in invocation['outputs']['artifacts'].items():
    artifact = dict(declared['artifacts'][0])
    written = executor_output.get('artifacts', {}).get(key, {}).get('artifacts', [{}])[0]
    artifact['metadata'] = written.get('metadata', {})
    recorded[key] = artifact
  return recorded


def run_pipeline(spec: Dict[str, Any], run_root: str, tasks: Optional[List[str]] = None,
                 env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None) -> Dict[str, Dict[str, Dict[str, Any]]]:
  """Runs `tasks` (default: all) in dependency order; returns every task's outputs."""
  produced: Dict[str, Dict[str, Dict[str, Any]]] = {}
  for name in task_order(spec):
    if tasks is not None and name not in tasks:
      continue
    produced[name] = run_task(spec, name, run_root, produced, env=env, cwd=cwd)
  return produced
