#!/usr/bin/env bash
# Set up (with dev tools) and run every check: lint, format, types, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
# -p no:cacheprovider: CI runs on a clean clone; no .pytest_cache to write.
.venv/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadfile "$@"
