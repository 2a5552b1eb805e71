"""The pytest plugin: options, the run's shared state, and the reporter (filled in by the matrix spine)."""

from __future__ import annotations
