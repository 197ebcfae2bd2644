"""PII masking (a mapper, not a filter): e-mail addresses, IPv4 addresses and phone numbers are replaced
by placeholders, Dolma's style; the counts go to the report."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .readers import Document

PATTERNS = {
    "email": (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}"), "|||EMAIL_ADDRESS|||"),
    "ip": (re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), "|||IP_ADDRESS|||"),
    "phone": (re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"), "|||PHONE_NUMBER|||"),
}


@dataclass
class PiiMasker:
    kinds: tuple = ("email", "ip", "phone")
    name: str = "pii"
    counts: Counter = field(default_factory=Counter)

    def __call__(self, doc: Document) -> None:
        text = doc.text
        for kind in self.kinds:
            pattern, placeholder = PATTERNS[kind]
            text, n = pattern.subn(placeholder, text)
            self.counts[kind] += n
        doc.text = text
        return None
