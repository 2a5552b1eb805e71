#!/usr/bin/env bash
# Proves the README's two commands on a machine that has none of the project's packages: builds a
# throwaway Debian 12 chroot (mmdebstrap, minbase), clones this repository at a commit into it, and runs
#
#   ./setup.sh && .venv/bin/pytest matrix/ -n auto      (the main job)
#   ./test.sh                                           (the harness's own tests)
#
# inside it, one after the other in the same chroot, each with its log in the log directory.
# Run as root on a Debian host (mmdebstrap and git installed).
#
#   scripts/clean-room.sh [--main-only | --tests-only] [--rev REV] [--logs DIR] [--keep DIR] [--no-ci]
#
#   --main-only    only the main job          --tests-only   only ./test.sh
#   --rev REV      the commit to clone (default HEAD). A fresh `git clone` is made, so uncommitted
#                  changes of this checkout are NOT in the clean room: commit them first.
#   --logs DIR     where main.log, tests.log and summary.txt go (default ./clean-room-logs)
#   --keep DIR     build the chroot in DIR (must not exist) and keep it afterwards, to look inside;
#                  mounts are undone either way. Default: a temporary directory, removed on exit.
#   --no-ci        run without CI=true. By default CI=true is set inside, so that setup.sh fails
#                  instead of skipping when a package the tests need cannot be installed.
#
# The Debian mirror is $BPF_MATRIX_MIRROR, else the one of this machine's apt sources (apt's own
# parse of /etc/apt/sources.list and /etc/apt/sources.list.d/*); the chroot's apt uses the same one.
# What a brand-new machine is taken to have: Debian 12 minbase (apt, dpkg, coreutils, bash, ...) and
# ca-certificates; no Python, no compiler, no git. Everything else must come from setup.sh.
set -euo pipefail

SUITE=bookworm
BASE_INCLUDE=ca-certificates

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

mode=both
rev=HEAD
logs=./clean-room-logs
keep=""
ci=true
while [ $# -gt 0 ]; do
  case "$1" in
    --main-only) mode=main ;;
    --tests-only) mode=tests ;;
    --rev) rev=${2:?--rev needs a commit}; shift ;;
    --logs) logs=${2:?--logs needs a directory}; shift ;;
    --keep) keep=${2:?--keep needs a directory}; shift ;;
    --no-ci) ci="" ;;
    -h|--help) usage 0 ;;
    *) echo "clean-room: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
  shift
done

die() { echo "clean-room: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, chroot and mounts need it)"
for tool in mmdebstrap git chroot mount umount; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --verify "$rev^{commit}") || die "no commit $rev in $repo"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "clean-room: note: $repo has uncommitted changes; they are not in the clean room" >&2
fi

# The mirror: apt itself reads the sources (both formats) and lists what it would fetch, so there is
# no second parser here. The main archive is the entry for a suite without a -security, -updates or
# -backports suffix; the security archive, if any, is kept for a machine-like sources list.
mirror=${BPF_MATRIX_MIRROR:-}
security=""
targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null | sort -u || true)
while read -r uri release; do
  [ -n "$uri" ] || continue
  case "$uri" in http://*|https://*) ;; *) continue ;; esac
  case "$release" in
    *-security) [ -n "$security" ] || security=${uri%/} ;;
    *-updates|*-backports|*-proposed-updates) ;;
    *) [ -n "$mirror" ] || mirror=${uri%/} ;;
  esac
done <<<"$targets"
[ -n "$mirror" ] || die "no Debian mirror in this machine's apt sources: set BPF_MATRIX_MIRROR"
mirror=${mirror%/}
sources=("deb $mirror $SUITE main" "deb $mirror $SUITE-updates main")
[ -n "$security" ] && sources+=("deb $security $SUITE-security main")

mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
if [ -n "$keep" ]; then
  [ ! -e "$keep" ] || die "$keep exists: --keep wants a new directory"
  mkdir -p "$keep"
  root=$(cd "$keep" && pwd)
else
  # Not under /tmp: the tree holds a few GB of packages, kernels and the arm64 root filesystem.
  root=$(mktemp -d "${TMPDIR:-/var/tmp}/clean-room.XXXXXX")
fi

mounted=()
cleanup() {
  local rc=$? pid m i
  # Processes still running inside (an interrupted pytest, a QEMU): end each one by its pid.
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    if [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  sleep 1
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m=${mounted[i]}
    umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || echo "clean-room: could not unmount $m" >&2
  done
  if grep -q " $root/" /proc/self/mountinfo; then
    echo "clean-room: mounts remain under $root; not removing it" >&2
  elif [ -z "$keep" ]; then
    rm -rf --one-file-system "$root"
  else
    echo "clean-room: chroot kept in $root"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "clean-room: $SUITE minbase chroot in $root, commit ${commit:0:12}, logs in $logs"
t0=$(date +%s)
mmdebstrap --quiet --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$root" "${sources[@]}" \
  >"$logs/mmdebstrap.log" 2>&1 || { tail -n 20 "$logs/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
echo "clean-room: chroot built in $(( $(date +%s) - t0 )) s"

# The network of this machine, not part of what is tested: name resolution, and the extra CA
# certificates it trusts (a TLS-inspecting egress proxy, a company CA), without which pip and npm
# cannot reach their registries from here at all.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/hosts "$root/etc/hosts"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1
fi

# A fresh clone at the commit: what a user who clones the repository gets.
src=/root/bpf-kernel-matrix
git clone -q --no-hardlinks "$repo" "$root$src"
git -C "$root$src" checkout -q --detach "$commit"

for m in proc sys dev tmp run; do
  case "$m" in
    proc) mount -t proc proc "$root/proc" ;;
    sys|dev) mount --rbind "/$m" "$root/$m"; mount --make-rslave "$root/$m" ;;
    tmp) mount -t tmpfs -o mode=1777 tmpfs "$root/tmp" ;;
    run) mount -t tmpfs -o mode=755 tmpfs "$root/run" ;;
  esac
  mounted+=("$root/$m")
done

# A clean environment: a fresh HOME (so ~/.cache/bpf-kernel-matrix starts empty), and of this
# machine's environment only what says how to reach the network.
home=/root/home
mkdir -p "$root$home"
envv=(HOME="$home" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
      TERM="${TERM:-dumb}")
[ -n "$ci" ] && envv+=(CI=true)
for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
            SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE PIP_CERT NODE_EXTRA_CA_CERTS PIP_DEFAULT_TIMEOUT; do
  [ -n "${!name:-}" ] && envv+=("$name=${!name}")
done
[ -n "${BPF_MATRIX_MIRROR:-}" ] && envv+=(BPF_MATRIX_MIRROR="$BPF_MATRIX_MIRROR")

# run NAME COMMAND: runs COMMAND in the chroot's checkout, log in $logs/NAME.log; sets rc_NAME, s_NAME.
run() {
  local name=$1 cmd=$2 start rc
  echo "clean-room: [$name] $cmd"
  start=$(date +%s)
  set +e
  chroot "$root" /usr/bin/env -i "${envv[@]}" /bin/bash -c "cd $src && $cmd" </dev/null >"$logs/$name.log" 2>&1
  rc=$?
  set -e
  printf -v "rc_$name" %d "$rc"
  printf -v "s_$name" %d "$(( $(date +%s) - start ))"
  echo "clean-room: [$name] exit $rc after $(( $(date +%s) - start )) s; last lines of $logs/$name.log:"
  tail -n 15 "$logs/$name.log" | sed 's/^/    /'
}

rc_main=-; rc_tests=-; s_main=-; s_tests=-
[ "$mode" = tests ] || run main './setup.sh && .venv/bin/pytest matrix/ -n auto'
[ "$mode" = main ] || run tests './test.sh'

{
  echo "commit $commit"
  echo "main  (./setup.sh && .venv/bin/pytest matrix/ -n auto): exit $rc_main, $s_main s"
  echo "tests (./test.sh): exit $rc_tests, $s_tests s"
} | tee "$logs/summary.txt"
for r in "$rc_main" "$rc_tests"; do
  if [ "$r" != - ] && [ "$r" != 0 ]; then exit 1; fi
done
exit 0
