"""Blocklists from files: URLs / domains (publishers' opt-outs, unwanted sites) and document ids (for
example the worst documents behind a loss spike)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

from lmstack.registry import register

from .readers import Document


def read_list(paths: list[str]) -> set[str]:
    """One entry per line (blank lines and # comments skipped); .jsonl files give their `id` fields."""
    entries = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                entries.add(str(json.loads(line)["id"]) if path.endswith(".jsonl") else line)
    return entries


def _host(url: str) -> str:
    host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    return host.removeprefix("www.")


@register("filter", "url_blocklist")
@dataclass
class UrlBlocklist:
    """Removes a document whose URL (metadata `url`, else an id that is a URL) is listed, or whose host or
    any parent domain of it is listed (`example.com` blocks `news.example.com`)."""

    files: list = field(default_factory=list)
    name: str = "url_blocklist"

    def __post_init__(self):
        entries = read_list(self.files)
        self._urls = {e for e in entries if "/" in e}
        self._domains = {_host(e) for e in entries if "/" not in e}

    def __call__(self, doc: Document) -> Optional[str]:
        url = doc.metadata.get("url") or (doc.id if "://" in doc.id else "")
        if not url:
            return None
        if url in self._urls:
            return "url"
        parts = _host(url).split(".")
        if any(".".join(parts[i:]) in self._domains for i in range(len(parts) - 1)):
            return "domain"
        return None


@register("filter", "id_blocklist")
@dataclass
class IdBlocklist:
    """Removes documents whose id is listed (plain lines, or .jsonl with an `id` field)."""

    files: list = field(default_factory=list)
    name: str = "id_blocklist"

    def __post_init__(self):
        self._ids = read_list(self.files)

    def __call__(self, doc: Document) -> Optional[str]:
        return "listed" if doc.id in self._ids else None
