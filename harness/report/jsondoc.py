"""The JSON renderer: the results document (harness/report/schema.json)."""

from __future__ import annotations

import json

from harness.report.results import Matrix


def render_json(m: Matrix) -> str:
    """The results document (harness/report/schema.json) as indented, key-sorted JSON."""
    return json.dumps(m.serialize(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
