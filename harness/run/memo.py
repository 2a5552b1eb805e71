"""Values a run computes once per key, and the harness errors it remembers instead of retrying."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from harness.errors import HarnessError

V = TypeVar("V")


class Memo(Generic[V]):
    """Each key's value, computed on first use; an error of ``remember`` is kept and raised again."""

    def __init__(self, remember: type[HarnessError] = HarnessError) -> None:
        self._remember = remember
        self._done: dict[str, V | HarnessError] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._done

    def get(self, key: str, compute: Callable[[], V]) -> V:
        """The value of ``key``; raises what computing it raised (the remembered error ever after)."""
        if key not in self._done:
            try:
                self._done[key] = compute()
            except self._remember as exc:
                self._done[key] = exc
                raise
        done = self._done[key]
        if isinstance(done, HarnessError):
            raise done
        return done

    def put(self, key: str, value: V | HarnessError) -> None:
        self._done[key] = value

    def peek(self, key: str) -> V | None:
        """The value of ``key`` when computed without error, else None."""
        done = self._done.get(key)
        return None if done is None or isinstance(done, HarnessError) else done
