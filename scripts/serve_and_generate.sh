#!/usr/bin/env bash
# The last leg of `make run`: serve the pushed versions with the TF-Serving-
# compatible server on free loopback ports, ask it for text over gRPC exactly as
# an application would, then stop the server.
set -euo pipefail
base="$1"; prompt="$2"; num_chars="$3"
PY=${PY:-.venv/bin/python}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port); rest_port=$(free_port)
log=$(mktemp)
"$PY" -m serving.server --host=127.0.0.1 --port="$grpc_port" --rest_api_port="$rest_port" \
  --model_name=char_rnn --model_base_path="$base" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 120); do
  if "$PY" -m serving.cli status --target="127.0.0.1:$grpc_port" >/dev/null 2>&1; then break; fi
  if ! kill -0 $server 2>/dev/null; then cat "$log"; echo "server exited" >&2; exit 1; fi
  sleep 1
done
echo "Served from $base on 127.0.0.1:$grpc_port (gRPC). Generated text:"
echo "-----"
"$PY" -m serving.cli generate --target="127.0.0.1:$grpc_port" \
  --prompt="$prompt" --num-chars="$num_chars"
echo "-----"
