"""The `bpf-matrix` command: list kernels, warm the kernel cache, render and merge results."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import reprlib
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TextIO

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match
from tabulate import tabulate
from tqdm import tqdm

from harness.errors import ConfigError, HarnessError, ResultsError
from harness.files import atomic_write
from harness.kernels.config import ARCHES, KernelsConfig, load_kernels_yaml
from harness.kernels.version import version_key
from harness.report.render import render_html, render_json, render_markdown, render_terminal
from harness.report.results import (
    CHECK_ORDER,
    CellResult,
    Check,
    KernelRun,
    Matrix,
    MergeConflictError,
    merge_matrices,
    migrate_document,
)

PROG = "bpf-matrix"
FORMATS = ("terminal", "markdown", "html", "json")

# Exit codes: 0 success, 1 a failure of the work itself (a download failed), 2 bad input.
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class InputError(HarnessError):
    """A file given on the command line is missing, unreadable or not a results document."""


# --- input --------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc


# A validation message quotes the offending value, which may be a whole record: a glance of it.
_GLANCE = reprlib.Repr()
_GLANCE.maxlevel, _GLANCE.maxdict, _GLANCE.maxlist, _GLANCE.maxstring = 2, 3, 3, 60


@functools.lru_cache(maxsize=1)
def _results_validator() -> Draft202012Validator:
    schema = json.loads(resources.files("harness.report").joinpath("schema.json").read_text("utf-8"))
    return Draft202012Validator(schema)


def _where(error: ValidationError) -> str:
    """The path of the offending value in the document, e.g. ``records[3].details``."""
    where = ""
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where


def check_results_document(name: str, data: Mapping[str, Any]) -> None:
    """Validate a results document against harness/report/schema.json.

    Raises InputError with one line: the file, the path in the document and what is wrong there.
    """
    error = best_match(_results_validator().iter_errors(data))
    if error is None:
        return
    message = error.message.replace(repr(error.instance), _GLANCE.repr(error.instance))
    message = " ".join(message.split())
    where = _where(error)
    raise InputError(f"{name}: {where}: {message}" if where else f"{name}: {message}")


def load_matrix(path: Path) -> Matrix:
    """Read a results document; raises InputError naming the file and what is wrong with it."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a results document (expected a JSON object)")
    try:
        # An older version is read as the current one; a wrong schema or version is named first,
        # which matters more than what the schema would find.
        current = migrate_document(data)
    except ResultsError as exc:
        raise InputError(f"{path}: {exc}") from exc
    check_results_document(str(path), current)
    try:
        return Matrix.deserialize(current)
    except ResultsError as exc:
        raise InputError(f"{path}: {exc}") from exc


def _load_kernels(path: Path) -> KernelsConfig:
    if not path.exists():
        raise ConfigError(f"{path}: no such file (give one with --kernels)")
    return load_kernels_yaml(path)


# --- output -------------------------------------------------------------------------------------


def _write(path: Path | None, text: str, stdout: TextIO) -> None:
    if path is None:
        stdout.write(text)
        return
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror}") from exc


def _can_encode(stream: TextIO, sample: str = "✓✗⊘–·×") -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# tqdm's default, with the unit on both byte counts: "4.00MiB/12.0MiB".
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}{unit}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]"


class ProgressBar:
    """A one-line download progress bar (tqdm) on a terminal; silent when the stream is not a TTY.

    Called as ``bar(done, total)`` with byte counts; ``total`` of 0 or less means unknown.
    """

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self._bar: tqdm[NoReturn] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(
                desc=self.label, total=total if total > 0 else None, file=self.stream, unit="iB",
                unit_scale=True, unit_divisor=1024, mininterval=0.1, dynamic_ncols=True,
                bar_format=_BAR_FORMAT if total > 0 else None,
            )
        elif total > 0 and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --- commands -----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load_kernels(args.kernels)
    if args.kernel:
        config = config.select(args.kernel)
    if args.json:
        include = [{"kernel": s.id, "arch": s.arch.name, "key": s.key} for s in config.kernels]
        out.write(json.dumps(include, separators=(",", ":")) + "\n")
        return 0
    rows = [
        [s.key, s.id, s.arch.name, s.describe(), "baseline" if s.id == config.baseline_id else ""]
        for s in config.kernels
    ]
    out.write(tabulate(
            rows,
            headers=["key", "kernel", "arch", "source", ""],
            tablefmt="simple",
            disable_numparse=True,
        ))
    out.write("\n")
    return 0


def cmd_fetch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load_kernels(args.kernels)
    if args.kernel:
        config = config.select(args.kernel)
    # Imported here: it pulls in the network stack, which the other commands do not need.
    fetch: Any = importlib.import_module("harness.kernels.fetch")
    failures = 0
    for spec in config.kernels:
        bar = ProgressBar(f"{spec.key:<16}", err)
        try:
            build = fetch.fetch_kernel(spec, cache_root=None, mirror=config.mirror, progress=bar)
        except HarnessError as exc:
            bar.close()
            err.write(f"{PROG}: {spec.key}: {exc}\n")
            failures += 1
            continue
        bar.close()
        verified = build.verified or "NOT verified"
        out.write(f"{spec.key}: {build.release} ({build.source}; {verified})\n")
    if failures:
        err.write(f"{PROG}: error: {failures} of {len(config.kernels)} kernels could not be fetched\n")
        return EXIT_FAILURE
    return 0


def _render(matrix: Matrix, fmt: str, title: str, ascii_only: bool) -> str:
    if fmt == "terminal":
        return render_terminal(matrix, ascii_only=ascii_only)
    if fmt == "markdown":
        return render_markdown(matrix)
    if fmt == "html":
        return render_html(matrix, title=title) if title else render_html(matrix)
    return render_json(matrix)


def cmd_render(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    matrix = load_matrix(args.results)
    ascii_only = args.ascii or (args.output is None and not _can_encode(out))
    _write(args.output, _render(matrix, args.format, args.title, ascii_only), out)
    return 0


def _arch_rank(arch: str) -> int:
    names = list(ARCHES)
    return names.index(arch) if arch in names else len(names)


def canonical_order(matrix: Matrix) -> Matrix:
    """Kernels by version then arch, records by probe, column and check.

    Shards arrive in whatever order their jobs finished or were downloaded; sorting makes the
    merged document the same whichever order that was.
    """
    def column_key(kernel: str, arch: str) -> tuple[Any, ...]:
        return (version_key(kernel, unparsable_last=True), _arch_rank(arch), arch)

    def record_key(r: CellResult) -> tuple[Any, ...]:
        p = r.probe
        return (p.object, p.program, p.section, p.kind, p.target,
                column_key(r.kernel, r.arch), CHECK_ORDER.index(r.check))

    kernels = sorted(matrix.kernels, key=lambda k: column_key(k.kernel, k.arch))
    records = tuple(sorted(matrix.records, key=record_key))
    return dataclasses.replace(matrix, records=records, kernels=tuple(kernels))


def order_like_config(matrix: Matrix, config: KernelsConfig) -> Matrix:
    """Order the kernels as kernels.yaml does, and mark entries with no results as errors.

    A shard that never arrived (its job was cancelled or its runner died) then shows as an
    error column instead of vanishing from the table.
    """
    runs = {(k.kernel, k.arch): k for k in matrix.kernels}
    seen_in_records = {(r.kernel, r.arch) for r in matrix.records}
    ordered: list[KernelRun] = []
    for spec in config.kernels:
        key = (spec.id, spec.arch.name)
        run = runs.pop(key, None)
        if run is None:
            error = "" if key in seen_in_records else "no results for this kernel (shard missing)"
            run = KernelRun(kernel=spec.id, arch=spec.arch.name, source=spec.describe(), error=error)
        ordered.append(run)
    ordered.extend(runs.values())
    return dataclasses.replace(matrix, kernels=tuple(ordered))


def merge_shards(paths: Sequence[Path], err: TextIO) -> Matrix:
    """Read and merge shards; raises InputError when they disagree (one line per differing cell).

    Shards that record no baseline (version 1) merge with any; a warning says which were assumed.
    """
    shards = [load_matrix(path) for path in paths]
    try:
        merged = merge_matrices(shards, [str(p) for p in paths])
    except MergeConflictError as exc:
        for line in exc.conflicts:
            err.write(f"{PROG}: error: conflict: {line}\n")
        if exc.conflicts:
            raise InputError(
                f"{len(exc.conflicts)} cell(s) differ between shards in outcome or reason "
                "(same object, program, kernel, arch and check); nothing written"
            ) from exc
        raise InputError(str(exc)) from exc
    for path, shard in zip(paths, shards):
        if shard.baseline is None and merged.baseline is not None:
            err.write(f"{PROG}: warning: {path} records no baseline; merged as diffed against "
                      f"{merged.baseline}\n")
    return merged


def cmd_merge(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    merged = canonical_order(merge_shards(args.shards, err))
    if args.kernels is not None:
        config = _load_kernels(args.kernels)
        if merged.baseline is not None and config.baseline_id != merged.baseline:
            raise InputError(f"{args.kernels}: baseline {config.baseline_id!r}, but the shards were "
                             f"diffed against {merged.baseline!r}")
        merged = order_like_config(merged, config)
    _write(args.output, render_json(merged), out)
    if args.markdown is not None:
        _write(args.markdown, render_markdown(merged), out)
    if args.html is not None:
        _write(args.html, render_html(merged, title=args.title), out)
    err.write(
        f"{PROG}: merged {len(args.shards)} shards: {len(merged.records)} records, "
        f"{len(merged.columns())} kernels -> {args.output}\n"
    )
    return 0


def cmd_offsets(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The field offsets per kernel of what programs read through CO-RE (from the layout check)."""
    from harness.checks.drift import render_offsets_table

    matrix = load_matrix(args.results)
    layout = [
        r for r in matrix.records
        if r.check == Check.LAYOUT and (not args.program or r.probe.program in args.program)
    ]
    if not layout:
        raise InputError(f"{args.results}: no layout results" + (f" for {', '.join(args.program)}"
                                                                    if args.program else ""))
    order = {c: i for i, c in enumerate(matrix.columns())}
    layout.sort(key=lambda r: order.get((r.kernel, r.arch), len(order)))
    _write(args.output, render_offsets_table(layout), out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Kernel-version compatibility matrix for eBPF programs: kernels, cache, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kernels_help = "the kernels file (default: kernels.yaml)"
    p = sub.add_parser("list", help="list the (kernel, arch) entries of kernels.yaml")
    p.add_argument("--kernels", type=Path, default=Path("kernels.yaml"), help=kernels_help)
    p.add_argument("--kernel", action="append", metavar="ID", help="only this id or id-arch key")
    p.add_argument(
        "--json", action="store_true", help="print a GitHub Actions matrix include list"
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("fetch", help="download and verify kernels into the cache")
    p.add_argument("--kernels", type=Path, default=Path("kernels.yaml"), help=kernels_help)
    p.add_argument(
        "--kernel", action="append", metavar="ID", help="only this id or id-arch key (repeatable)"
    )
    p.set_defaults(func=cmd_fetch)

    title_default = "eBPF kernel compatibility matrix"
    p = sub.add_parser("render", help="render a results JSON as a table, Markdown, HTML or JSON")
    p.add_argument("results", type=Path, metavar="RESULTS.json")
    p.add_argument("--format", "-f", choices=FORMATS, default="terminal")
    p.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    p.add_argument("--ascii", action="store_true", help="terminal format in plain ASCII")
    p.add_argument("--title", default=title_default, help="the HTML page's title")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("merge", help="merge shard results into one document")
    p.add_argument("shards", type=Path, nargs="+", metavar="SHARD.json")
    p.add_argument("-o", "--output", type=Path, required=True, help="the merged results JSON")
    p.add_argument("--markdown", type=Path, metavar="OUT.md", help="also write a Markdown report")
    p.add_argument("--html", type=Path, metavar="OUT.html", help="also write an HTML report")
    p.add_argument(
        "--kernels",
        type=Path,
        help="order columns as this kernels.yaml does and show missing shards as errors",
    )
    p.add_argument("--title", default=title_default, help="the HTML page's title")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("offsets", help="field offsets per kernel of what programs read through CO-RE")
    p.add_argument("results", type=Path, metavar="RESULTS.json")
    p.add_argument("--program", action="append", metavar="NAME", help="only this program (repeatable)")
    p.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    p.set_defaults(func=cmd_offsets)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad input or usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        code: int = args.func(args, out, err)
    except (InputError, ConfigError) as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    except HarnessError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILURE
    except ImportError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`bpf-matrix list | head`): not an error of ours.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
