"""`lmstack prepare`: read -> filter -> deduplicate -> tokenize, accounting for every document.

Outputs in `output_dir`: `documents.jsonl.gz` (the kept documents), `rejects.jsonl` (unreadable input,
with file, line and reason), `removed/RULE.jsonl.gz` when `keep_removed`, `stats.json`, `report.md`,
`report.png`, and the tokenized corpus (`tokenizer.json`, `<source>/train|val` litdata chunks,
`meta.json`) that training reads with `data_mix=prepared data_mix.dir=DIR`, and `timing.json` (wall time,
CPU and peak memory per stage: how the run went, apart from what it produced).

Every stage is a map over tasks (`stages`), run by one executor (`executors`: local processes or Ray), with
the documents between stages in the output's `.work/` folder (`stage_documents`): read tasks over files and byte
ranges, dedup over hash partitions of the keys (`partitions`), MinHash pairs joined into components
(`near_dups`), tokenization per task into one index (`shard_tokenize`). No process holds the corpus, and the
outputs are the same bytes whatever the executor and the number of workers.
"""

from __future__ import annotations

import json
import logging

from lmstack.config.prepare import PrepareSection

from .buckets import check_buckets
from .build import build_dedup, build_filters, minhash_step
from .inputs import expand_inputs, file_fingerprint
from .resume import changes, config_files, produced_by
from .steps import Sizer

log = logging.getLogger(__name__)


def check_config(cfg: dict | PrepareSection) -> PrepareSection:
    """The prepare section, checked before any work (keys, types and bounds, finite numbers, seeds >= 0, steps
    that build); a plain mapping is turned into the section here, the one place the pipeline takes one."""
    from dataclasses import asdict

    from lmstack.config.validate import check_values, to_dataclass

    if isinstance(cfg, PrepareSection):
        cfg = asdict(cfg)
    check_values(cfg, "prepare")
    section = to_dataclass(PrepareSection, cfg, "prepare")
    build_filters(section), build_dedup(section), Sizer.from_section(section), minhash_step(section)
    check_buckets(section)
    return section


def run_prepare(inputs: list[str], output_dir: str, cfg: dict | PrepareSection) -> dict:
    """Run the configured pipeline; returns the stats dict (also written to output_dir/stats.json).

    `cfg` may carry `executor` (local or ray), `num_workers` and `ray.address`: where tasks run, not what they
    produce. The output folder is claimed first (`lmstack.ownership`: lmstack's own or new, apart from the
    inputs, locked against a second run); a finished run with the same input fingerprints and config is
    returned as it is; otherwise every task finished before (by an interrupted run) is kept and the rest run
    (read tasks are kept across config changes that leave them alone, e.g. an input file added)."""
    from lmstack.ownership import OwnedFolder

    from .. import storage
    from .executors import executor
    from .job import PrepareJob

    cfg = check_config(cfg)
    if storage.is_url(output_dir):  # object storage: prepared in a local folder, then uploaded
        from .remote import prepare_to_url

        return prepare_to_url(inputs, output_dir, cfg, run_prepare)
    files = expand_inputs(inputs)
    with OwnedFolder(output_dir, "prepare", files) as owned:
        out = owned.path
        fps = [file_fingerprint(f) for f in files]
        named = config_files(cfg)
        fingerprint = {"inputs": fps + named, "config": produced_by(cfg)}
        if owned.complete and (out / "stats.json").is_file():
            if owned.marker.get("fingerprint") == fingerprint:
                log.info("%s is complete already, from the same inputs and config", out)
                return json.loads((out / "stats.json").read_text())
            log.warning(
                "%s was prepared from other inputs or config (%s): preparing it again",
                out,
                changes(owned.marker.get("fingerprint"), fingerprint),
            )
        owned.update(status="running", fingerprint=fingerprint)
        staging = owned.staging()
        where = executor(cfg.executor, cfg.num_workers, cfg.ray.address)
        with where as ex:
            acct, timing = PrepareJob(files, fps, named, cfg, out / ".work", staging, ex).run()
        acct.write(staging, timing)
        owned.publish(staging, last="stats.json")  # the previous results and .work go
        return acct.to_dict()
