"""The harness's error hierarchy: every failure the harness reports derives from HarnessError."""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose; its message is one line a user can act on."""


class ConfigError(HarnessError):
    """kernels.yaml, a sidecar file or an option is malformed or names something unknown."""


class FetchError(HarnessError):
    """A kernel, index or root filesystem could not be downloaded (mirror unreachable, HTTP error)."""


class IntegrityError(FetchError):
    """Downloaded or cached bytes do not match their expected digest or signature."""


class CacheError(IntegrityError):
    """A kernel cache entry's manifest is malformed (wrong schema, fields of the wrong type)."""


class BuildError(HarnessError):
    """A BPF source did not compile; the message carries the compiler's first error."""


class ObjectError(HarnessError):
    """A file under bpf_progs/ is not a usable BPF object (not ELF, not BPF, no programs)."""


class ResultsError(HarnessError):
    """A results document is not JSON, names another schema or version, or has a malformed record."""


class BTFError(HarnessError):
    """BTF bytes are malformed or use a kind the reader does not know."""


class VMError(HarnessError):
    """The VM or its guest agent failed: infrastructure, never an incompatibility of a probe."""


class LostVMError(VMError):
    """The guest never reported completion: it panicked, hung past its timeout, or was killed."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail
