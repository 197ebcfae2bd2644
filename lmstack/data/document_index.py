"""Which document a training token came from: a source's `documents.jsonl` maps the ordinal stored beside
each token to the document's id and source name (for spike forensics and the instance filter's listing)."""

from __future__ import annotations

import json
from pathlib import Path


class DocumentIndex:
    """Per source index, its documents.jsonl, read once on first use."""

    def __init__(self, files: list[str]):
        self.files = [str(f) for f in files]
        self._rows: dict[int, dict[int, dict]] = {}

    def describe(self, source: int, ordinal: int) -> dict:
        """{"id", "source"} of a document; `source:ordinal` and the source index when its file is missing."""
        if source not in self._rows:
            path = Path(self.files[source]) if source < len(self.files) else None
            rows = {}
            if path is not None and path.exists():
                with open(path) as f:
                    rows = {row["ordinal"]: row for row in map(json.loads, f)}
            self._rows[source] = rows
        row = self._rows[source].get(ordinal, {})
        return {"id": row.get("id", f"{source}:{ordinal}"), "source": row.get("source", str(source))}
