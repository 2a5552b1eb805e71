"""kernels.yaml: the kernels and architectures to test and where each comes from (pure parsing)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    """An architecture the harness can boot and compile for."""

    name: str  # the name users write: x86_64, arm64
    debian: str  # Debian's architecture name
    vng: str  # what `vng --arch` takes
    uname: str  # what `uname -m` prints in the guest
    target_arch: str  # libbpf's __TARGET_ARCH_<x> (selects pt_regs accessors)
    syscall_prefix: str  # the syscall wrapper prefix, since 4.17 (CONFIG_ARCH_HAS_SYSCALL_WRAPPER)
    image_names: tuple[str, ...]  # kernel image file names in a package's boot/ directory
    timeout_factor: float  # how much slower than x86_64 a boot is when emulated
    elf_machine: int  # e_machine of its executables and shared libraries (EM_X86_64, EM_AARCH64)


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        name="x86_64",
        debian="amd64",
        vng="amd64",
        uname="x86_64",
        target_arch="x86",
        syscall_prefix="__x64_sys_",
        image_names=("vmlinuz",),
        timeout_factor=1.0,
        elf_machine=62,
    ),
    "arm64": Arch(
        name="arm64",
        debian="arm64",
        vng="arm64",
        uname="aarch64",
        target_arch="arm64",
        syscall_prefix="__arm64_sys_",
        image_names=("vmlinuz",),
        timeout_factor=3.0,
        elf_machine=183,
    ),
}

ARCH_ALIASES = {"amd64": "x86_64", "aarch64": "arm64"}

# Debian codenames whose archive carries kernels; suites are a codename with an optional suffix.
DEBIAN_CODENAMES = ("bullseye", "bookworm", "trixie", "forky", "duke", "sid", "unstable", "experimental")
DEBIAN_SUFFIXES = ("", "-backports", "-updates", "-proposed-updates")

SOURCES = ("debian", "local")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

TOP_KEYS = {"mirror", "baseline", "defaults", "kernels", "guest"}
DEFAULT_KEYS = {"memory", "cpus", "timeout", "append", "arches"}
KERNEL_KEYS = {
    "id", "source", "suite", "arch", "arches", "package", "flavour", "image", "modules",
    "memory", "cpus", "timeout", "append", "mirror", "version", "guest",
}
GUEST_KEYS = {"suite", "packages", "root"}
# Where a guest's userland (the loader: libbpf, bpftool, python3) comes from. "debian": a root
# filesystem built from the guest suite for the guest's arch; "host": the host's own root over 9p
# (the host's arch only, and the host's libbpf: a cell then also differs by the machine it ran on).
GUEST_ROOTS = ("debian", "host")


def resolve_arch(name: str) -> Arch:
    """Return the Arch called ``name`` (or an alias of it); raises ConfigError when unknown."""
    key = ARCH_ALIASES.get(name, name)
    try:
        return ARCHES[key]
    except KeyError:
        raise ConfigError(f"unknown arch {name!r} (known: {', '.join(ARCHES)})") from None


def arch_names() -> dict[str, Arch]:
    """Every name an arch goes by (its own and its aliases), e.g. for per-arch directories."""
    return {**ARCHES, **{name: ARCHES[key] for name, key in ARCH_ALIASES.items()}}


def resolve_elf_machine(machine: int) -> Arch | None:
    """The Arch whose executables have ELF ``machine``, or None for one the harness does not boot."""
    return next((a for a in ARCHES.values() if a.elf_machine == machine), None)


def host_arch() -> Arch:
    """The Arch of the machine running the harness."""
    import platform

    return resolve_arch(platform.machine())


@dataclass(frozen=True)
class GuestSpec:
    """The guest userland a kernel boots into: a root filesystem of one Debian suite (the same on
    every arch, so that a cell differs by kernel and arch only), or the host's own root."""

    suite: str = "trixie"
    packages: tuple[str, ...] = ()
    root: str = "debian"  # one of GUEST_ROOTS

    @property
    def host(self) -> bool:
        return self.root == "host"

    def describe(self) -> str:
        """The userland as results name it: ``debian trixie`` or ``host``."""
        return "host" if self.host else f"debian {self.suite}"


@dataclass(frozen=True)
class KernelSpec:
    """One (kernel, arch) entry to test, resolved from kernels.yaml."""

    id: str  # the user's name for the kernel, e.g. "6.1"
    arch: Arch
    source: str  # debian or local
    suite: str = ""  # debian: the suite whose linux-image-<arch> meta-package is followed
    package: str = ""  # debian: an explicit image package instead of the meta-package's choice
    flavour: str = ""  # debian: the image flavour (default: the arch's Debian name)
    mirror: str = ""  # debian: overrides the file's and the machine's mirror
    image: Path | None = None  # local: the kernel image
    modules: Path | None = None  # local: its lib/modules/<version> directory
    memory: str = "1G"
    cpus: int = 1
    timeout: float = 300.0  # seconds for one boot on x86_64 under KVM-less emulation
    append: tuple[str, ...] = ()
    guest: GuestSpec = field(default_factory=GuestSpec)

    @property
    def key(self) -> str:
        """The (kernel, arch) pair as one string, used in test ids and cache paths."""
        return f"{self.id}-{self.arch.name}"

    @property
    def label(self) -> str:
        """The (kernel, arch) pair as messages name it: ``kernel '6.1' (x86_64)``."""
        return f"kernel {self.id!r} ({self.arch.name})"

    def describe(self) -> str:
        if self.source == "debian":
            what = self.package or f"linux-image-{self.flavour or self.arch.debian}"
            return f"debian {self.suite} {what} ({self.arch.name})"
        return f"local {self.image} ({self.arch.name})"




@dataclass(frozen=True)
class KernelsConfig:
    """The whole of kernels.yaml."""

    path: Path
    kernels: tuple[KernelSpec, ...]
    mirror: str = ""
    baseline: str = ""  # the kernel id others are diffed against; default the first listed
    guest: GuestSpec = field(default_factory=GuestSpec)  # the file's default; entries may override it
    # Every entry of the file, also when ``kernels`` is a selection (a shard): the baseline may be
    # outside the shard, and a shard must diff against the same kernel as a run over the whole file.
    universe: tuple[KernelSpec, ...] = ()

    def ids(self) -> list[str]:
        return list(dict.fromkeys(k.id for k in self.kernels))

    @property
    def baseline_id(self) -> str:
        return self.baseline or (self.kernels[0].id if self.kernels else "")

    def select(self, keys: list[str]) -> KernelsConfig:
        """Keep the entries whose id or ``id-arch`` key is in ``keys``; raises ConfigError for others."""
        known = {k.key for k in self.kernels} | {k.id for k in self.kernels}
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown kernel {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        chosen = tuple(k for k in self.kernels if k.key in keys or k.id in keys)
        return KernelsConfig(
            self.path, chosen, self.mirror, self.baseline_id, self.guest, self.universe or self.kernels
        )

    def baseline_spec(self, arch: str) -> KernelSpec | None:
        """The baseline kernel's entry for ``arch``, from the whole file (it may be outside a shard)."""
        for spec in self.universe or self.kernels:
            if spec.id == self.baseline_id and spec.arch.name == arch:
                return spec
        return None


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(allowed))})"
        )


class _WrittenFloat(float):
    """A YAML float that keeps the text it was written as: 5.10 reads as 5.1, and a hint to quote
    it must say "5.10"."""

    written: str


class _Loader(yaml.SafeLoader):
    """The safe loader, with floats that remember how they were written."""


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value = _WrittenFloat(loader.construct_yaml_float(node))
    value.written = str(node.value)
    return value


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _written(value: Any) -> str:
    """``value`` as the user wrote it in the file (a float's own text, not Python's repr)."""
    return value.written if isinstance(value, _WrittenFloat) else str(value)


def _not_a_number(where: str, key: str, value: Any) -> None:
    """Refuse a kernel id written unquoted as a number: YAML reads 5.10 as 5.1, and 6.1 as a float
    that would only by chance name the kernel meant."""
    if isinstance(value, float):
        written = _written(value)
        read = "" if written == str(value) else f" ({value!r})"
        raise ConfigError(
            f"{where}: {key} {written} was read as a number{read}: quote it ({key}: \"{written}\")"
        )


def _str(where: str, key: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _written(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key!r} must be a string, not {type(value).__name__}")
    return value


def _validate_suite(where: str, suite: str) -> str:
    for codename in DEBIAN_CODENAMES:
        for suffix in DEBIAN_SUFFIXES:
            if suite == codename + suffix:
                return suite
    raise ConfigError(
        f"{where}: unknown Debian suite {suite!r} (a codename of {', '.join(DEBIAN_CODENAMES)}, "
        f"optionally with -backports)"
    )


def _arches(where: str, entry: Mapping[str, Any], default: list[str]) -> list[Arch]:
    if "arch" in entry and "arches" in entry:
        raise ConfigError(f"{where}: give 'arch' or 'arches', not both")
    raw: Any = [entry["arch"]] if "arch" in entry else entry.get("arches", default)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'arches' must be a non-empty list")
    arches: list[Arch] = []
    for name in raw:
        try:
            arch = resolve_arch(_str(where, "arch", name))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if arch not in arches:
            arches.append(arch)
    return arches


def _local_path(where: str, base: Path, key: str, value: Any) -> Path:
    path = Path(_str(where, key, value)).expanduser()
    return path if path.is_absolute() else (base / path)


def parse_kernels_yaml(text: str, path: Path = Path("kernels.yaml")) -> KernelsConfig:
    """Parse kernels.yaml text; raises ConfigError naming the file and the entry at fault."""
    data = _load_top(text, path)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping")
    _check_keys(f"{path}: defaults", defaults, DEFAULT_KEYS)
    entries = data.get("kernels")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: 'kernels' must be a non-empty list")
    mirror = _str(str(path), "mirror", data.get("mirror") or "")
    guest = parse_guest(f"{path}: guest", data.get("guest"), GuestSpec())
    specs: list[KernelSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        specs.extend(_parse_entry(path, index, entry, defaults, seen, guest))
    _not_a_number(str(path), "baseline", data.get("baseline"))
    baseline = _str(str(path), "baseline", data.get("baseline") or "")
    if baseline and baseline not in seen:
        raise ConfigError(f"{path}: baseline {baseline!r} is not a kernel id of this file")
    return KernelsConfig(path=path, kernels=tuple(specs), mirror=mirror, baseline=baseline, guest=guest)


def _load_top(text: str, path: Path) -> dict[str, Any]:
    """The top-level mapping of kernels.yaml text, its keys checked."""
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'kernels' list at the top")
    if "rootfs" in data:
        raise ConfigError(f"{path}: 'rootfs' is now 'guest' (guest: {{suite: ..., packages: [...]}})")
    _check_keys(str(path), data, TOP_KEYS)
    return data


def _entry_id(path: Path, index: int, entry: Any, seen: set[str]) -> tuple[str, str]:
    """(where, id) of one kernels[] entry: where names it in messages; the id is added to ``seen``."""
    where = f"{path}: kernels[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
    if "id" in entry:
        where = f"{path}: kernel {_written(entry['id'])!r}"
    _check_keys(where, entry, KERNEL_KEYS)
    if "id" not in entry:
        raise ConfigError(f"{where}: missing 'id'")
    # Refused rather than testing a kernel called "5.1" when 5.10 was meant.
    _not_a_number(where, "id", entry["id"])
    kid = _str(where, "id", entry["id"])
    if not _ID_RE.match(kid):
        raise ConfigError(f"{where}: id {kid!r} must be letters, digits, '.', '_', '+' or '-'")
    if kid in seen:
        raise ConfigError(f"{where}: duplicate id {kid!r}")
    seen.add(kid)
    return where, kid


def _vm_settings(where: str, merged: Mapping[str, Any]) -> dict[str, Any]:
    """The VM settings every arch of an entry shares (memory, cpus, timeout, append)."""
    try:
        timeout = float(merged.get("timeout", 300))
        cpus = int(merged.get("cpus", 1))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: 'timeout' and 'cpus' must be numbers") from exc
    if timeout <= 0 or cpus <= 0:
        raise ConfigError(f"{where}: 'timeout' and 'cpus' must be positive")
    append_raw = merged.get("append", [])
    append = tuple(append_raw.split() if isinstance(append_raw, str) else append_raw)
    return {
        "memory": _str(where, "memory", merged.get("memory", "1G")),
        "cpus": cpus,
        "timeout": timeout,
        "append": append,
    }


def _parse_entry(
    path: Path, index: int, entry: Any, defaults: Mapping[str, Any], seen: set[str], guest: GuestSpec
) -> list[KernelSpec]:
    """The KernelSpecs (one per arch) of one kernels[] entry."""
    where, kid = _entry_id(path, index, entry, seen)
    source = _str(where, "source", entry.get("source", "debian"))
    if source not in SOURCES:
        raise ConfigError(f"{where}: unknown source {source!r} (known: {', '.join(SOURCES)})")
    common = _vm_settings(where, {**defaults, **entry})
    common["guest"] = parse_guest(f"{where}: guest", entry.get("guest"), guest)
    specs: list[KernelSpec] = []
    for arch in _arches(where, entry, defaults.get("arches", ["x86_64"])):
        if source == "debian":
            specs.append(_debian_spec(where, kid, arch, entry, common))
        else:
            specs.append(_local_spec(where, kid, arch, source, entry, path.parent, common))
    return specs


def _debian_spec(
    where: str, kid: str, arch: Arch, entry: Mapping[str, Any], common: dict[str, Any]
) -> KernelSpec:
    if "suite" not in entry:
        raise ConfigError(f"{where}: a debian kernel needs a 'suite'")
    for key in ("image", "modules"):
        if key in entry:
            raise ConfigError(f"{where}: {key!r} is for local kernels")
    return KernelSpec(
        id=kid,
        arch=arch,
        source="debian",
        suite=_validate_suite(where, _str(where, "suite", entry["suite"])),
        package=_str(where, "package", entry.get("package", "")),
        flavour=_str(where, "flavour", entry.get("flavour", "")),
        mirror=_str(where, "mirror", entry.get("mirror", "")),
        **common,
    )


def _local_spec(
    where: str,
    kid: str,
    arch: Arch,
    source: str,
    entry: Mapping[str, Any],
    base: Path,
    common: dict[str, Any],
) -> KernelSpec:
    if "image" not in entry:
        raise ConfigError(f"{where}: a local kernel needs an 'image'")
    return KernelSpec(
        id=kid,
        arch=arch,
        source=source,
        image=_local_path(where, base, "image", entry["image"]),
        modules=(
            _local_path(where, base, "modules", entry["modules"]) if "modules" in entry else None
        ),
        **common,
    )


def parse_guest(where: str, raw: Any, base: GuestSpec) -> GuestSpec:
    """A ``guest:`` mapping over ``base`` (the file's default, or the built-in one): keys it gives
    replace base's. Raises ConfigError for an unknown key, suite or root."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping (e.g. {{suite: trixie}})")
    _check_keys(where, raw, GUEST_KEYS)
    suite = _validate_suite(where, _str(where, "suite", raw.get("suite", base.suite)))
    root = _str(where, "root", raw.get("root", base.root))
    if root not in GUEST_ROOTS:
        raise ConfigError(f"{where}: unknown root {root!r} (known: {', '.join(GUEST_ROOTS)})")
    packages_raw = raw.get("packages", base.packages)
    if not isinstance(packages_raw, (list, tuple)):
        raise ConfigError(f"{where}: 'packages' must be a list of Debian package names")
    packages = tuple(_str(where, "packages", p) for p in packages_raw)
    return GuestSpec(suite=suite, packages=packages, root=root)


def load_kernels_yaml(path: Path) -> KernelsConfig:
    """Read and parse kernels.yaml at ``path``; raises ConfigError when missing or invalid."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_kernels_yaml(text, path)
