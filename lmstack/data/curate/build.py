"""The configured steps of `lmstack prepare`, built from the `prepare` section: the filters (in config order,
then PII masking, then decontamination against eval sets), the exact dedup steps and MinHash. Every task
builds its own from the config it is given."""

from __future__ import annotations

from .blocklists import IdBlocklist, UrlBlocklist
from .decontaminate import Decontaminate
from .dedup import ExactDedup, MinHashDedup, ParagraphDedup, UrlDedup
from .filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, LanguageID
from .pii import PiiMasker

FILTERS = {
    "language": LanguageID,
    "gopher_quality": GopherQuality,
    "gopher_repetition": GopherRepetition,
    "c4": C4Quality,
    "fineweb": FineWebQuality,
    "url_blocklist": UrlBlocklist,
    "id_blocklist": IdBlocklist,
}
STREAM_DEDUP = {"url": UrlDedup, "exact": ExactDedup, "paragraph": ParagraphDedup}


def _tuples(kw: dict) -> dict:
    """YAML gives lists; the rule parameters that are pairs want tuples."""
    return {
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in kw.items()
    }


def build_filters(cfg: dict) -> list:
    """The per-document steps, in order: filters (config order), PII masking, decontamination."""
    steps = []
    for name, kw in (cfg.get("filters") or {}).items():
        if kw is None or kw is False:
            continue
        if name not in FILTERS:
            raise ValueError(f"prepare.filters.{name}: unknown filter; allowed: {', '.join(FILTERS)}")
        steps.append(FILTERS[name](**_tuples(kw or {})))
    if cfg.get("pii"):
        steps.append(PiiMasker())
    decont = cfg.get("decontaminate") or {}
    if decont.get("tasks"):
        steps.append(Decontaminate(**decont))
    return steps


def build_dedup(cfg: dict) -> list:
    """The exact dedup steps (URL, text, paragraphs) in config order; each is one pass over hash partitions."""
    steps = []
    for name, on in (cfg.get("dedup") or {}).items():
        if name == "minhash" or not on:
            continue
        if name not in STREAM_DEDUP:
            raise ValueError(f"prepare.dedup.{name}: unknown; allowed: {', '.join([*STREAM_DEDUP, 'minhash'])}")
        steps.append(STREAM_DEDUP[name](**(on if isinstance(on, dict) else {})))
    return steps


def minhash_step(cfg: dict) -> MinHashDedup | None:
    mh = (cfg.get("dedup") or {}).get("minhash")
    return MinHashDedup(**(mh if isinstance(mh, dict) else {})) if mh else None


def dedup_steps(cfg: dict) -> list:
    """The dedup steps in order: the configured URL/exact/paragraph ones, then MinHash."""
    mh = minhash_step(cfg)
    return [*build_dedup(cfg), *([mh] if mh else [])]
