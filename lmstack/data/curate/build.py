"""The configured steps of `lmstack prepare`, built from the checked `prepare` section: the filters (in config
order, then PII masking, then decontamination against eval sets), the exact dedup steps and MinHash. Filters and
dedup steps are registered components (`lmstack.registry`, kinds `filter` and `dedup`), so a user's own filter
is a module of theirs named in `prepare.imports`. Every task builds its own steps from the section it is given."""

from __future__ import annotations

from dataclasses import asdict

from lmstack.config.prepare import PrepareSection
from lmstack.registry import import_modules, lookup

from .decontaminate import Decontaminate
from .pii import PiiMasker
from .quality import QualityClassifier, QualityScore

STREAM_ORDER = ("url", "exact", "paragraph")  # the exact dedup steps, each one pass over hash partitions


def _tuples(kw: dict) -> dict:
    """YAML gives lists; the rule parameters that are pairs want tuples."""
    return {
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in kw.items()
    }


def build_filters(cfg: PrepareSection) -> list:
    """The per-document steps, in order: filters (config order), PII masking, decontamination."""
    import_modules(cfg.imports, "prepare.imports")  # in every worker: the user's filters register themselves
    steps = []
    for name, kw in (cfg.filters or {}).items():
        if kw is None or kw is False:
            continue
        steps.append(lookup("filter", name, f"prepare.filters.{name}")(**_tuples(kw or {})))
    if cfg.pii:
        steps.append(PiiMasker())
    if cfg.decontaminate is not None and cfg.decontaminate.tasks:
        steps.append(Decontaminate(**asdict(cfg.decontaminate)))
    classifiers = quality_classifiers(cfg)
    if classifiers:
        steps.append(QualityScore(classifiers))
    return steps


def quality_classifiers(cfg: PrepareSection) -> list[QualityClassifier]:
    """The `prepare.quality` classifiers, in config order (a null entry is off)."""
    out = []
    for name, kw in (cfg.quality or {}).items():
        if kw is None or kw is False:
            continue
        if not isinstance(kw, dict) or "model" not in kw:
            raise ValueError(f"prepare.quality.{name}: give {{model: PATH, threshold: T}} or {{model: PATH, "
                             "keep_fraction: F}}")  # fmt: skip
        try:
            out.append(QualityClassifier(name, **kw))
        except TypeError as e:
            raise ValueError(f"prepare.quality.{name}: {e}; the keys are model, threshold, keep_fraction, label")
    return out


def _options(on) -> dict:
    return on if isinstance(on, dict) else {}


def build_dedup(cfg: PrepareSection) -> list:
    """The exact dedup steps (URL, text, paragraphs) that are on, in that order."""
    dedup = cfg.dedup
    if dedup is None:
        return []
    on = [n for n in STREAM_ORDER if getattr(dedup, n)]
    return [lookup("dedup", n, f"prepare.dedup.{n}")(**_options(getattr(dedup, n))) for n in on]


def minhash_step(cfg: PrepareSection):
    mh = cfg.dedup.minhash if cfg.dedup is not None else None
    return lookup("dedup", "minhash", "prepare.dedup.minhash")(**_options(mh)) if mh else None


def dedup_steps(cfg: PrepareSection) -> list:
    """The global steps in order: the configured URL/exact/paragraph dedup, MinHash, then the quality
    classifiers that keep a share of the whole job (`keep_fraction`)."""
    mh = minhash_step(cfg)
    share = [c for c in quality_classifiers(cfg) if c.keep_fraction is not None]
    return [*build_dedup(cfg), *([mh] if mh else []), *share]
