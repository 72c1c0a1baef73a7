"""The playground: a page on the REST port to try the served model in a browser.

`routes(manager)` returns tornado URL specs that the REST server mounts beside
TF Serving's `/v1/...` API:

  GET /playground                 -> redirect to /playground/
  GET /playground/                -> serving/playground/index.html (static, no build step)
  GET /playground/<file>          -> the page's .js / .css
  GET /playground/info/<model>    -> {"version", "eval_loss", "corpus", "tokens", ...}
                                     of the version that answers Latest(<model>) now

The page itself only calls TF Serving's REST API (`/v1/models/<model>` status and
metadata, `:predict` with the one_step / generate / score signatures), so the same
files work in front of the real TF Serving binary behind a reverse proxy
(serving/README.md, "Playground"). The info endpoint is ours alone: TF Serving has
no way to read a version's assets.extra/, and the page shows "unknown" without it.

Reads only what the Trainer put beside the SavedModel (assets.extra/metrics.json,
assets.extra/vocabulary.json) of the version the ModelManager serves: never the
training code (serving deploys alone).
"""

import json
import logging
import os
from typing import Any, Dict, List

import tornado.web
from tensorflow_serving.apis import model_pb2

from serving.models import ModelManager, RequestError

log = logging.getLogger('serving')

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playground')
EXTRA_DIR = 'assets.extra'
METRICS_FILE = 'metrics.json'
VOCAB_FILE = 'vocabulary.json'
# metrics.json keys passed through to the page as they are (when present).
_METRIC_KEYS = ('eval_loss', 'bits_per_char', 'perplexity', 'train_steps', 'train_seconds',
                'epochs_run', 'stopped_by_time_budget', 'precision', 'vocab_size', 'state_size',
                'corpus')
_CONFIG_KEYS = ('preset', 'rnn_type', 'rnn_units', 'num_layers', 'embedding_dim', 'seq_length',
                'max_generate_chars')


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    log.warning('Playground: cannot read %s: %s', path, e)
    return None


def version_info(name: str, version: int, path: str, signatures) -> Dict[str, Any]:
  """What the page shows about one version directory (its assets.extra/ files)."""
  extra = os.path.join(path, EXTRA_DIR)
  info: Dict[str, Any] = {'name': name, 'version': version, 'signatures': sorted(signatures)}
  metrics = _read_json(os.path.join(extra, METRICS_FILE))
  if isinstance(metrics, dict):
    info.update({k: metrics[k] for k in _METRIC_KEYS if k in metrics})
    config = metrics.get('config')
    if isinstance(config, dict):
      info['config'] = {k: config[k] for k in _CONFIG_KEYS if k in config}
      if 'corpus' not in info:
        for key in ('corpus', 'corpus_uri', 'corpus_sources'):
          if key in config:
            info['corpus'] = config[key]
            break
  vocab = _read_json(os.path.join(extra, VOCAB_FILE))
  tokens = vocab.get('tokens') if isinstance(vocab, dict) else vocab
  if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
    info['vocab_size'] = len(tokens)
    info['tokens'] = tokens   # labels for one_step's logits (the hover's alternatives)
  return info


def model_info(manager: ModelManager, name: str) -> Dict[str, Any]:
  """What the page shows about the version serving Latest(name); RequestError if none."""
  servable = manager.servable(model_pb2.ModelSpec(name=name))
  return version_info(name, servable.version, servable.path, servable.signature_defs)


class InfoHandler(tornado.web.RequestHandler):
  """GET /playground/info/<model>: the served version's training figures, as JSON."""

  def initialize(self, manager: ModelManager):
    self.manager = manager

  def get(self, name: str):
    from serving.rest import HTTP_CODE   # one table of gRPC -> HTTP codes
    self.set_header('Content-Type', 'application/json')
    self.set_header('Cache-Control', 'no-store')
    try:
      body = model_info(self.manager, name)
    except RequestError as e:
      self.set_status(HTTP_CODE.get(e.code, 500))
      body = {'error': e.message}
    self.finish(json.dumps(body))


class _StaticHandler(tornado.web.StaticFileHandler):
  def set_extra_headers(self, path):
    # The page is tiny; a stale copy after an upgrade confuses more than it saves.
    self.set_header('Cache-Control', 'no-cache')


def routes(manager: ModelManager) -> List[tuple]:
  """Tornado URL specs for the playground; mount them before a catch-all route."""
  return [
      (r'/playground', tornado.web.RedirectHandler, {'url': '/playground/'}),
      (r'/playground/info/([^/]+)', InfoHandler, {'manager': manager}),
      (r'/playground/(.*)', _StaticHandler,
       {'path': STATIC_DIR, 'default_filename': 'index.html'}),
  ]


def main(argv=None) -> int:
  """`--info <version dir>`: the JSON /playground/info/ answers, for a proxy to serve as a file."""
  import argparse
  from serving.models import read_signature_defs
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('--info', required=True, metavar='VERSION_DIR')
  parser.add_argument('--model_name', default='char_rnn')
  args = parser.parse_args(argv)
  path = os.path.abspath(args.info.rstrip('/'))
  version = os.path.basename(path)
  if not version.isdigit():
    parser.error(f'{args.info} is not a version directory (<base path>/<number>)')
  try:
    signatures = read_signature_defs(path)
  except (OSError, ValueError) as e:
    parser.error(f'{args.info}: not a SavedModel ({e})')
  print(json.dumps(version_info(args.model_name, int(version), path, signatures)))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
