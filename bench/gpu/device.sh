#!/usr/bin/env bash
# On the lent GPU machine (bench/gpu/__main__.py says why and how): installs the
# carried Keras wheels beside the machine's own JAX and trains the `tutorial` preset
# with Keras on JAX; weights and history land in $OUT.
#   run(command='bash bench/gpu/device.sh', carry=['.gpu'], timeout_s=300)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax, keras; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__)'
python3 -m bench.gpu train --data .gpu --out "${OUT:?OUT names the folder that comes back}"
