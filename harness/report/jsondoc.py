"""The JSON renderer: the results document (harness/report/schema.json)."""

from __future__ import annotations

import json

from harness.report.groups import serialize_groups
from harness.report.results import Matrix


def render_json(m: Matrix) -> str:
    """The results document (harness/report/schema.json) as indented, key-sorted JSON; its groups
    carry their verdicts and their object's summary."""
    document = {**m.serialize(), "groups": serialize_groups(m)}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
