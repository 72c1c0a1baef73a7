"""A loopback stand-in for the KFP API server: the v2beta1 REST endpoints that
pipeline/schedule.py reaches through the kfp 2.5 SDK client (kfp_server_api
2.0.5), with in-memory state and every request recorded.

Endpoints (paths as kfp_server_api builds them):
  GET    /apis/v2beta1/healthz
  GET    /apis/v2beta1/pipelines?filter=...                 (get_pipeline_id)
  POST   /apis/v2beta1/pipelines/upload?name=&description=&namespace=   multipart `uploadfile`
  POST   /apis/v2beta1/pipelines/upload_version?name=&pipelineid=&description=  multipart
  GET    /apis/v2beta1/pipelines/{id}/versions?sort_by=&page_size=
  GET    /apis/v2beta1/experiments?filter=&namespace=
  POST   /apis/v2beta1/experiments
  GET    /apis/v2beta1/recurringruns?experiment_id=&filter=
  POST   /apis/v2beta1/recurringruns
  DELETE /apis/v2beta1/recurringruns/{id}
Anything else answers 404 with a KFP-style error body, so an unexpected call
fails the client loudly.
"""

import dataclasses
import datetime
import email.parser
import email.policy
import http.server
import itertools
import json
import threading
import urllib.parse
from typing import Any, Dict, List, Optional

PREFIX = '/apis/v2beta1'


@dataclasses.dataclass
class Request:
  method: str
  path: str
  query: Dict[str, str]
  body: Any = None                      # parsed JSON body
  files: Dict[str, bytes] = dataclasses.field(default_factory=dict)  # multipart uploads


def _matches(item: Dict[str, Any], filter_json: Optional[str]) -> bool:
  if not filter_json:
    return True
  for predicate in json.loads(filter_json).get('predicates', []):
    # Proto JSON: the enum by name or by number (the kfp client sends 1).
    if predicate.get('operation') not in ('EQUALS', 1):
      raise ValueError(f'unsupported filter operation {predicate}')
    wanted = predicate.get('stringValue', predicate.get('string_value'))
    if item.get(predicate['key']) != wanted:
      return False
  return True


class FakeKfpApi:
  """State and request log; `serve()` runs it on 127.0.0.1 at an ephemeral port."""

  def __init__(self, multi_user: bool = False):
    self.multi_user = multi_user
    self.requests: List[Request] = []
    self.pipelines: Dict[str, Dict[str, Any]] = {}
    self.versions: Dict[str, Dict[str, Any]] = {}
    self.experiments: Dict[str, Dict[str, Any]] = {}
    self.recurring_runs: Dict[str, Dict[str, Any]] = {}
    self._ids = itertools.count(1)
    self._clock = itertools.count(0)
    self._lock = threading.Lock()
    self._server: Optional[http.server.ThreadingHTTPServer] = None

  # --------------------------------------------------------------- helpers
  def _id(self, kind: str) -> str:
    return f'{kind}-{next(self._ids)}'

  def _now(self) -> str:
    t = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + \
        datetime.timedelta(seconds=next(self._clock))
    return t.strftime('%Y-%m-%dT%H:%M:%SZ')

  def _new_version(self, pipeline_id: str, name: str, spec_yaml: bytes,
                   description: str = '') -> Dict[str, Any]:
    import yaml
    version = {'pipeline_version_id': self._id('version'), 'pipeline_id': pipeline_id,
               'display_name': name, 'description': description,
               'created_at': self._now(), 'pipeline_spec': yaml.safe_load(spec_yaml)}
    self.versions[version['pipeline_version_id']] = version
    return version

  def calls(self, method: str, path_suffix: str) -> List[Request]:
    return [r for r in self.requests if r.method == method and r.path == PREFIX + path_suffix]

  # -------------------------------------------------------------- routing
  def handle(self, request: Request):
    """Returns (status, JSON-able body)."""
    self.requests.append(request)
    path, q = request.path, request.query
    if not path.startswith(PREFIX):
      return 404, {'error': f'no route {path}'}
    route = path[len(PREFIX):].strip('/').split('/')
    key = (request.method, route[0], len(route))
    if key == ('GET', 'healthz', 1):
      return 200, {'multi_user': self.multi_user}
    if key == ('GET', 'pipelines', 1):
      found = [p for p in self.pipelines.values() if _matches(p, q.get('filter'))]
      return 200, {'pipelines': found, 'total_size': len(found)} if found else {}
    if key == ('POST', 'pipelines', 2) and route[1] == 'upload':
      name = q['name']
      if any(p['display_name'] == name for p in self.pipelines.values()):
        return 409, {'error': f'pipeline {name} exists'}
      pipeline = {'pipeline_id': self._id('pipeline'), 'display_name': name,
                  'description': q.get('description', ''), 'created_at': self._now()}
      if q.get('namespace'):
        pipeline['namespace'] = q['namespace']
      self.pipelines[pipeline['pipeline_id']] = pipeline
      self._new_version(pipeline['pipeline_id'], name, request.files['uploadfile'])
      return 200, pipeline
    if key == ('POST', 'pipelines', 2) and route[1] == 'upload_version':
      if q.get('pipelineid') not in self.pipelines:
        return 404, {'error': f'no pipeline {q.get("pipelineid")}'}
      if any(v['pipeline_id'] == q['pipelineid'] and v['display_name'] == q['name']
             for v in self.versions.values()):
        return 409, {'error': f'version {q["name"]} exists'}
      return 200, self._new_version(q['pipelineid'], q['name'], request.files['uploadfile'],
                                    q.get('description', ''))
    if key == ('GET', 'pipelines', 3) and route[2] == 'versions':
      found = [v for v in self.versions.values() if v['pipeline_id'] == route[1]]
      if q.get('sort_by') == 'created_at desc':
        found.sort(key=lambda v: v['created_at'], reverse=True)
      found = found[:int(q.get('page_size') or len(found) or 1)]
      return 200, {'pipeline_versions': found, 'total_size': len(found)}
    if key == ('GET', 'experiments', 1):
      found = [e for e in self.experiments.values() if _matches(e, q.get('filter'))
               and (not q.get('namespace') or e.get('namespace') == q['namespace'])]
      return 200, {'experiments': found, 'total_size': len(found)} if found else {}
    if key == ('POST', 'experiments', 1):
      experiment = dict(request.body, experiment_id=self._id('experiment'),
                        created_at=self._now(), storage_state='AVAILABLE')
      self.experiments[experiment['experiment_id']] = experiment
      return 200, experiment
    if key == ('GET', 'recurringruns', 1):
      found = [r for r in self.recurring_runs.values() if _matches(r, q.get('filter'))
               and (not q.get('experiment_id') or r['experiment_id'] == q['experiment_id'])]
      return 200, {'recurringRuns': found, 'total_size': len(found)} if found else {}
    if key == ('POST', 'recurringruns', 1):
      body = request.body
      reference = body.get('pipeline_version_reference') or {}
      version = self.versions.get(reference.get('pipeline_version_id'))
      if version is None or version['pipeline_id'] != reference.get('pipeline_id'):
        return 400, {'error': f'unknown pipeline version reference {reference}'}
      declared = version['pipeline_spec']['root'].get('inputDefinitions', {}).get('parameters', {})
      unknown = set(body.get('runtime_config', {}).get('parameters') or {}) - set(declared)
      if unknown:
        return 400, {'error': f'parameters not in the pipeline: {sorted(unknown)}'}
      run = dict(body, recurring_run_id=self._id('recurring'), created_at=self._now(),
                 status='ENABLED' if body.get('mode') == 'ENABLE' else 'DISABLED')
      self.recurring_runs[run['recurring_run_id']] = run
      return 200, run
    if key == ('DELETE', 'recurringruns', 2):
      if self.recurring_runs.pop(route[1], None) is None:
        return 404, {'error': f'no recurring run {route[1]}'}
      return 200, {}
    return 404, {'error': f'no route {request.method} {path}'}

  # --------------------------------------------------------------- server
  def serve(self) -> str:
    api = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def _dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length) if length else b''
        request = Request(self.command, url.path, query)
        content_type = self.headers.get('Content-Type', '')
        if content_type.startswith('multipart/form-data'):
          message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
              b'Content-Type: ' + content_type.encode() + b'\r\n\r\n' + raw)
          for part in message.iter_parts():
            request.files[part.get_param('name', header='content-disposition')] = \
                part.get_payload(decode=True)
        elif raw:
          request.body = json.loads(raw)
        with api._lock:  # pylint: disable=protected-access
          try:
            status, body = api.handle(request)
          except Exception as e:  # pylint: disable=broad-except
            status, body = 500, {'error': f'{type(e).__name__}: {e}'}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      do_GET = do_POST = do_DELETE = _dispatch

      def log_message(self, *args):  # quiet
        pass

    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    host, port = self._server.server_address
    return f'http://{host}:{port}'

  def close(self) -> None:
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
