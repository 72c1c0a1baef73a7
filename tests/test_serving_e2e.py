"""The pushed model of a real tiny pipeline run, served by `python -m serving.server`
as `make serve` starts it (bound to 127.0.0.1, as scripts/serve_and_generate.sh
does), and asked for text by `python -m serving.cli` exactly as `make generate` does:
two separate processes over loopback gRPC/REST. The deprecated alias
`python -m serving.client` is run once too, so old command lines keep working.
"""

import json
import math
import os
import signal
import subprocess
import sys
import urllib.request

from serving.client import Client
from tests.test_serving_helpers import REPO_DIR, corpus_chars, free_port

CORPUS_PASSAGE = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\n'
                  'All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die '
                  'than to famish?\n')


def test_served_pipeline_push_generates_text_through_the_cli(tiny_pipeline):
  base = tiny_pipeline.model_base_path
  pushed = sorted(int(d) for d in os.listdir(base) if d.isdigit())
  assert pushed, f'the tiny pipeline pushed nothing under {base}'
  grpc_port, rest_port = free_port(), free_port()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  server = subprocess.Popen(
      [sys.executable, '-m', 'serving.server', '--host=127.0.0.1', f'--port={grpc_port}',
       f'--rest_api_port={rest_port}', '--model_name=char_rnn', f'--model_base_path={base}'],
      cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # Ready when it answers; UNAVAILABLE while it starts is retried with back-off.
    with Client(f'127.0.0.1:{grpc_port}', retries=40, backoff=0.5, max_backoff=2.0) as c:
      info = c.metadata()
      assert info.version == pushed[-1]
      vocab_size = info.signatures['one_step']['outputs']['logits'].shape[1]
      score = c.score([CORPUS_PASSAGE])[0]
      # Trained, even briefly: better than a uniform guess over the vocabulary.
      assert score.bits_per_char < math.log2(vocab_size)

    generated = subprocess.run(
        [sys.executable, '-m', 'serving.cli', 'generate', '--prompt', 'ROMEO:',
         '--num-chars', '300', f'--target=127.0.0.1:{grpc_port}', '--seed=1'],
        cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    text = generated.stdout[:-1]                 # the CLI ends with one newline
    assert text.startswith('ROMEO:') and len(text) == len('ROMEO:') + 300
    assert set(text) <= set(corpus_chars())

    # The old spelling still works (a deprecated alias of serving.cli), and says so.
    alias = subprocess.run(
        [sys.executable, '-m', 'serving.client', 'status', f'--target=127.0.0.1:{grpc_port}'],
        cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert alias.returncode == 0, alias.stderr
    assert f'char_rnn version {pushed[-1]}: AVAILABLE' in alias.stdout.splitlines()
    assert 'deprecated' in alias.stderr and 'serving.cli' in alias.stderr

    with urllib.request.urlopen(f'http://127.0.0.1:{rest_port}/v1/models/char_rnn',
                                timeout=30) as r:
      status = json.loads(r.read())['model_version_status'][0]
    assert (status['version'], status['state']) == (str(pushed[-1]), 'AVAILABLE')
  finally:
    server.send_signal(signal.SIGTERM)
    log = server.communicate(timeout=60)[0]
  assert server.returncode == 0, log             # SIGTERM is a clean shutdown
  assert 'Running gRPC ModelServer at' in log
