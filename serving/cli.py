"""Command line for char_rnn on TensorFlow Serving: `python -m serving.cli SUBCOMMAND ...`.

A thin wrapper over the client library (serving/client.py), kept apart from it so
that importing the library parses no arguments and so that the library's API is
what an application sees. Output and exit codes are the contract scripts rely on
(`make generate`, scripts/serve_and_generate.sh): the text, one newline at the
end; exit 0 on success, 1 on a server error (one `error:` line plus a `hint:`),
2 on a local error (bad file, missing --text), 130 on Ctrl-C. `status` exits 1
when no version is AVAILABLE, which makes it a readiness probe.

    python -m serving.cli generate --prompt "ROMEO:" --num-chars 500
    python -m serving.cli stream --prompt "ROMEO:" --num-chars 200 --temperature 0.8
    python -m serving.cli score --text "To be, or not to be"
    python -m serving.cli metadata | status
      [--target localhost:8500] [--model char_rnn] [--version N | --label L]
      [--timeout 60] [--retries 4] [--root-cert ca.pem [--client-cert c.pem --client-key k.pem]
      [--server-name host]] [--max-message-mb 64]

(common flags go after the subcommand). `python -m serving.client ...` is a
deprecated alias of this.
"""

import argparse
import os
import sys
from typing import Optional

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # before TensorFlow is imported
  import warnings
  warnings.filterwarnings('ignore', category=FutureWarning)   # google.api_core's Python-version notice

import grpc

from serving.client import DEFAULT_MODEL, DEFAULT_TARGET, Client, ServingError

_HINTS = {
    grpc.StatusCode.UNAVAILABLE: 'is a server running at {target}? (make serve)',
    grpc.StatusCode.NOT_FOUND: 'check --model/--version/--label and `status`; '
                               'has a version been pushed and loaded?',
    grpc.StatusCode.DEADLINE_EXCEEDED: 'raise --timeout, or ask for fewer characters',
    grpc.StatusCode.FAILED_PRECONDITION: 'see `metadata` for the signatures this model has',
    grpc.StatusCode.RESOURCE_EXHAUSTED: 'the server stayed at capacity through every retry '
                                        '(raise --retries, or try later), or a message is over '
                                        'a size limit (send less, or raise --max-message-mb)',
}


def _read(path: Optional[str]) -> Optional[bytes]:
  if not path:
    return None
  with open(path, 'rb') as f:
    return f.read()


def build_arg_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--target', default=DEFAULT_TARGET, help='host:port of the gRPC API')
  common.add_argument('--model', default=DEFAULT_MODEL, help='model name')
  pin = common.add_mutually_exclusive_group()
  pin.add_argument('--version', type=int, help='pin a model version')
  pin.add_argument('--label', help='pin a version label (from the server config)')
  common.add_argument('--timeout', type=float, default=60.0, help='deadline per call, seconds')
  common.add_argument('--retries', type=int, default=4, 
                      help='retries on UNAVAILABLE and on RESOURCE_EXHAUSTED (server busy)')
  common.add_argument('--tls', action='store_true', help='TLS with the system roots')
  common.add_argument('--root-cert', help='PEM file of the CA that signed the server cert')
  common.add_argument('--client-cert', help='PEM client certificate (mutual TLS)')
  common.add_argument('--client-key', help='PEM client private key (mutual TLS)')
  common.add_argument('--server-name', help='TLS name to verify instead of the target host')
  common.add_argument('--max-message-mb', type=int, default=64)

  p = argparse.ArgumentParser(prog='python -m serving.cli',
                              description='Talk to char_rnn on TensorFlow Serving over gRPC.')
  sub = p.add_subparsers(dest='command', required=True)
  g = sub.add_parser('generate', parents=[common], help='generate text (one round trip)')
  g.add_argument('--prompt', action='append', help='repeat for a batch (default ROMEO:)')
  g.add_argument('--num-chars', type=int, default=500)
  g.add_argument('--temperature', type=float, default=1.0)
  g.add_argument('--seed', type=int, help='reproducible sampling (default: random)')
  g.add_argument('--no-prompt', action='store_true', help='print only the continuation')
  s = sub.add_parser('stream', parents=[common], help='print characters as they come (one_step)')
  s.add_argument('--prompt', default='ROMEO:')
  s.add_argument('--num-chars', type=int, default=500)
  s.add_argument('--temperature', type=float, default=1.0)
  c = sub.add_parser('score', parents=[common], help='log-likelihood, bits/char, perplexity')
  c.add_argument('--text', action='append', help='text to score (repeatable)')
  c.add_argument('--file', help='score the contents of this file ("-" = stdin)')
  sub.add_parser('metadata', parents=[common], help="signatures of the served version")
  sub.add_parser('status', parents=[common], help='versions and their states (exit 1 if none '
                 'is AVAILABLE)')
  return p


def _client(args) -> Client:
  return Client(args.target, args.model, version=args.version, label=args.label,
                timeout=args.timeout, retries=args.retries,
                root_certificates=_read(args.root_cert), private_key=_read(args.client_key),
                certificate_chain=_read(args.client_cert), tls=args.tls or None,
                server_name=args.server_name, max_message_bytes=args.max_message_mb << 20)


def _run(args, out) -> int:
  with _client(args) as client:
    if args.command == 'generate':
      prompts = args.prompt or ['ROMEO:']
      texts = client.generate(prompts, args.num_chars, args.temperature, args.seed)
      for i, (prompt, text) in enumerate(zip(prompts, texts)):
        if i:
          out.write('\n-----\n')
        out.write(text if args.no_prompt else prompt + text)
      out.write('\n')
    elif args.command == 'stream':
      out.write(args.prompt)
      for ch in client.stream(args.prompt, args.num_chars, args.temperature):
        out.write(ch)
        out.flush()
      out.write('\n')
    elif args.command == 'score':
      texts = list(args.text or [])
      if args.file:
        texts.append(sys.stdin.read() if args.file == '-' else open(args.file, encoding='utf-8').read())
      if not texts:
        raise ValueError('give --text or --file')
      out.write(f'{"log-likelihood":>15} {"chars":>7} {"bits/char":>9} {"perplexity":>10}  text\n')
      for s in client.score(texts):
        preview = s.text[:40].replace('\n', '\\n')
        out.write(f'{s.log_likelihood:15.3f} {s.num_scored:7d} {s.bits_per_char:9.4f} '
                  f'{s.perplexity:10.3f}  {preview}\n')
    elif args.command == 'metadata':
      info = client.metadata()
      out.write(f'model {info.name} version {info.version} (state size {info.state_size})\n')
      for name, sig in sorted(info.signatures.items()):
        def fmt(specs):
          return ', '.join(f'{k} {v.dtype.name}{v.shape if v.shape is not None else "[?]"}'
                           .replace('None', '?') for k, v in sorted(specs.items()))
        out.write(f'  {name}({fmt(sig["inputs"])}) -> {fmt(sig["outputs"])}\n')
    elif args.command == 'status':
      versions = client.status()
      for v in versions:
        error = f' {v.error_code}: {v.error_message}' if v.error_code != 'OK' else ''
        out.write(f'{client.model_name} version {v.version}: {v.state}{error}\n')
      return 0 if any(v.state == 'AVAILABLE' for v in versions) else 1
  return 0


def main(argv=None) -> int:
  args = build_arg_parser().parse_args(argv)
  try:
    return _run(args, sys.stdout)
  except ServingError as e:
    print(f'error: {e}', file=sys.stderr)
    hint = _HINTS.get(e.code)
    if hint:
      print(f'hint: {hint.format(target=args.target)}', file=sys.stderr)
    return 1
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == '__main__':
  sys.exit(main())
