"""Type names to type ids for one BTF spec, found by searching its string section, not decoding every name."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from itertools import compress

from harness.btf.types import Kind

# bytes.translate() table: 1 for the FUNC kind, 0 for the others (a mask for itertools.compress).
_FUNC_MASK = bytes(int(k == Kind.FUNC) for k in range(256))


class NameIndex:
    """The names of one spec's own types (a split spec's base has its own index, given as ``base``)."""

    def __init__(
        self,
        words: array[int],
        starts: Sequence[int],
        kinds: bytes,
        strings: bytes,
        first_id: int,
        str_base: int,
        string: Callable[[int], str],
        base: NameIndex | None,
    ) -> None:
        self._words = words
        self._starts = starts
        self._kinds = kinds
        self._strings = strings
        self._first_id = first_id
        self._str_base = str_base
        self._string = string
        self._base = base
        self._by_name: dict[str, list[int]] | None = None
        self._ids_named: dict[str, list[int]] = {}
        self._name_offs: array[int] | None = None
        self._name_offs_bytes = b""
        self._used_name_offs: frozenset[int] = frozenset()
        self._func_names: frozenset[str] | None = None

    def _name_index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            w = self._words
            string = self._string
            tid = self._first_id
            for start in self._starts:
                off = w[start]
                if off:
                    index.setdefault(string(off), []).append(tid)
                tid += 1
            self._by_name = index
        return self._by_name

    def _name_offsets(self) -> array[int]:
        """The name offset of each type this spec defines, in id order."""
        if self._name_offs is None:
            self._name_offs = array(self._words.typecode, map(self._words.__getitem__, self._starts))
        return self._name_offs

    def string_offsets(self, encoded: bytes) -> Iterator[int]:
        """Offsets (the base's first) where the string ``encoded`` (no NUL in it) starts and ends."""
        if self._base is not None:
            yield from self._base.string_offsets(encoded)
        strings = self._strings
        pattern = encoded + b"\0"
        pos = strings.find(pattern)
        while pos >= 0:
            yield self._str_base + pos
            pos = strings.find(pattern, pos + 1)
        # string() also ends a string at the end of the section.
        if strings.endswith(encoded) and not strings.endswith(pattern):
            yield self._str_base + len(strings) - len(encoded)

    def ids_named(self, name: str) -> list[int]:
        """Ids of this spec's types named ``name`` (not the base's), in id order.

        A lookup searches the string section for the name, then the types for its offsets, instead of
        decoding every type's name into an index: a run looks up tens of names among 100k+ types.
        """
        if self._by_name is not None:
            return self._by_name.get(name, [])
        found = self._ids_named.get(name)
        if found is not None:
            return found
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            encoded = b""
        if not encoded or b"\0" in encoded or "\ufffd" in name:
            # Names no offset search can find: empty, or only made by decoding invalid UTF-8.
            return self._name_index().get(name, [])
        found = self._ids_at_offsets(self.string_offsets(encoded))
        self._ids_named[name] = found
        return found

    def _ids_at_offsets(self, offsets: Iterator[int]) -> list[int]:
        """Ids of this spec's types whose name is at one of ``offsets``, sorted."""
        offs = self._name_offsets()
        if not self._name_offs_bytes:
            self._name_offs_bytes = offs.tobytes()
            self._used_name_offs = frozenset(offs)
        used, packed, width = self._used_name_offs, self._name_offs_bytes, offs.itemsize
        found = []
        for off in offsets:
            if off == 0 or off not in used:  # offset 0 is the anonymous types' name
                continue
            needle = array(offs.typecode, (off,)).tobytes()
            i = packed.find(needle)
            while i >= 0:
                if i % width:
                    i = packed.find(needle, i + 1)
                    continue
                found.append(self._first_id + i // width)
                i = packed.find(needle, i + width)
        found.sort()
        return found

    def func_names(self) -> frozenset[str]:
        """Names of every FUNC type, the base's included (cached)."""
        if self._func_names is None:
            funcs = compress(self._name_offsets(), self._kinds.translate(_FUNC_MASK))
            names = set(map(self._string, funcs))
            if self._base is not None:
                names |= self._base.func_names()
            self._func_names = frozenset(names)
        return self._func_names
