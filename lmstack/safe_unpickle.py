"""Unpickling with an allow-list: a pickle may name only the classes listed, so loading it cannot call
a function of the file's choosing. For the pickles lmstack reads (DCP checkpoint metadata, the per-file
results a resumed `lmstack prepare` reuses)."""

from __future__ import annotations

import io
import pickle
from typing import Callable, Iterable


class AllowListUnpickler(pickle.Unpickler):
    def __init__(
        self, file, allowed: Iterable[tuple[str, str]], allow: Callable[[str, str, object], bool] | None = None
    ):
        super().__init__(file)
        self.allowed, self.allow = set(allowed), allow

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        if self.allow is not None:
            try:
                obj = super().find_class(module, name)
            except (ImportError, AttributeError):
                obj = None
            if obj is not None and self.allow(module, name, obj):
                return obj
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def loads(data: bytes, allowed: Iterable[tuple[str, str]], allow=None):
    """pickle.loads that refuses every global outside `allowed` (or accepted by `allow(module, name, obj)`)."""
    return AllowListUnpickler(io.BytesIO(data), allowed, allow).load()
