"""The driver of one `lmstack prepare` job: it plans the tasks of every stage, hands them to the executor,
and keeps only their small results (counts, timings); documents and keys stay in the work folder.

    .work/read/<task key>/        read tasks (reused by any later job with the same input, range and config)
    .work/job-<key>/stepK/...     partitions, verification, components and pass tasks of dedup step K
    .work/job-<key>/tokenize/tT/  token chunks of read task T
"""

from __future__ import annotations

import resource
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import buckets, stages
from . import partitions as parts
from .build import dedup_steps
from .near_dups import VERIFY_PAIRS_PER_TASK
from .resume import job_key, task_key
from .shard_tokenize import make_tokenizer, merge_tokenized, tokenize_task
from .stage_documents import concat_members
from .stats import Accounting, StageStats, estimate_tokens
from .tasks import plan_tasks
from .workdir import clear_partials, done, result


class PrepareJob:
    def __init__(self, files, fingerprints, named, cfg, work: Path, out: Path, ex):
        self.files, self.fps, self.named, self.cfg = files, fingerprints, named, cfg
        self.work, self.out, self.ex = work, out, ex
        self.timing: dict[str, dict] = {}
        self.workers = cfg.num_workers
        self.docs_read, self.t0 = 0, time.time()

    # ---- running a stage ---------------------------------------------------------------------------
    def stage(self, name: str, fn, jobs: list[dict]) -> list[dict]:
        """Every job's result, in order; a job whose folder is complete is not run again."""
        results: list = [None] * len(jobs)
        todo = [i for i, j in enumerate(jobs) if not done(Path(j["dir"]))]
        for i in set(range(len(jobs))) - set(todo):
            results[i] = result(Path(jobs[i]["dir"]))
        t0 = time.time()
        self.bar.total += len(jobs)
        self.bar.set_description(f"prepare: {name}")
        self.bar.update(len(jobs) - len(todo))
        for i, r in zip(todo, self.ex.map(fn, [jobs[i] for i in todo])):
            results[i] = r
            self.docs_read += r.get("docs_in", 0)
            self.bar.update()
            self.bar.set_postfix_str(f"{self.docs_read / max(time.time() - self.t0, 1e-9):,.0f} docs/s")
        ran = [results[i]["_timing"] for i in todo]
        wall = time.time() - t0
        cpu = sum(t["cpu"] for t in ran)
        entry = self.timing.setdefault(
            name, {"tasks": 0, "tasks_run": 0, "wall": 0.0, "cpu": 0.0, "peak_mb": 0.0, "nodes": 0}
        )
        entry["nodes"] = max(entry["nodes"], len({t.get("node") for t in ran}))
        entry["tasks"] += len(jobs)
        entry["tasks_run"] += len(todo)
        entry["wall"] += wall
        entry["cpu"] += cpu
        entry["peak_mb"] = max([entry["peak_mb"], *(t["peak_mb"] for t in ran)])
        return results

    # ---- the pipeline ------------------------------------------------------------------------------
    def run(self) -> tuple[Accounting, dict]:
        self.work.mkdir(exist_ok=True)
        clear_partials(self.work)
        with tqdm(total=0, unit="task", desc="prepare") as self.bar:
            t0 = time.time()
            tasks = plan_tasks(self.files, self.cfg.task_bytes, self.ex)
            self.timing["plan"] = {"tasks": len(tasks), "wall": time.time() - t0}
            fp = dict(zip(self.files, self.fps))
            keys = [task_key(fp[t.path], t.key(), self.cfg, self.named) for t in tasks]
            jobs = [{"dir": str(self.work / "read" / k), "task": t, "cfg": self.cfg} for k, t in zip(keys, tasks)]
            read = self.stage("read", stages.read_task, jobs)
            self.job_dir = self.work / f"job-{job_key(keys, self.cfg)}"
            for stale in self.work.glob("job-*"):  # an earlier job's, with other inputs or config
                if stale != self.job_dir:
                    shutil.rmtree(stale, ignore_errors=True)
            folders, results = [[j["dir"] for j in jobs]], [read]  # per stage: its task folders, its results
            steps = dedup_steps(self.cfg)
            for k in range(len(steps)) or [None]:
                stage_folders, res = self.dedup_step(k, steps, folders[-1], results[-1])
                folders.append(stage_folders)
                results.append(res)
            acct = self.accounting(results, len(tasks))
            self.outputs(folders, results, acct)
        me = resource.getrusage(resource.RUSAGE_SELF)
        total = time.time() - self.t0
        timing = {
            "seconds": round(total, 2),
            "docs_per_second": round(acct.docs_in / max(total, 1e-9), 1),
            "cpu_utilisation": round(
                sum(t.get("cpu", 0) for t in self.timing.values()) / max(total, 1e-9) / max(self.workers, 1), 3
            ),
            "driver_peak_mb": round(me.ru_maxrss / 1024, 1),
            "workers": self.workers,
            "executor": self.cfg.executor,
            "stages": self.timing,
        }
        return acct, timing

    def dedup_step(self, k, steps, folders: list[str], previous: list[dict]) -> tuple[list[str], list[dict]]:
        """Decide step k over partitions of its keys, then apply it to every read task's documents."""
        if k is None:  # no dedup: the pass tasks only write the outputs
            decisions, name = [], "write"
        else:
            step, name = steps[k], steps[k].name
            n = parts.num_partitions(sum(r.get("keys", 0) for r in previous)) if not hasattr(step, "decide") else 1
            base = self.job_dir / f"step{k}"
            jobs = [
                {"dir": str(base / f"part{p}"), "cfg": self.cfg, "step": k, "p": p, "n": n, "folders": folders}
                for p in range(n)
            ]
            self.stage(name, stages.partition_task, jobs)
            decisions = [j["dir"] for j in jobs]
            if step.name == "minhash_dedup":
                decisions = self.near_duplicates(step, base, decisions, folders)
        base = self.job_dir / (f"step{k}" if k is not None else "write")
        jobs = [
            {"dir": str(base / f"t{t}"), "cfg": self.cfg, "step": k, "t": t, "prev": f, "decisions": decisions}
            for t, f in enumerate(folders)
        ]
        res = self.stage(f"{name} (apply)", stages.pass_task, jobs)
        return [j["dir"] for j in jobs], res

    def near_duplicates(self, step, base: Path, edge_folders: list[str], folders: list[str]) -> list[str]:
        """MinHash candidate pairs, verified when `jaccard` is set, joined into components (one task)."""
        if step.jaccard is not None:
            pairs = np.concatenate([np.load(Path(f) / "rows.npy") for f in edge_folders])
            pairs = np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
            per_task = min(VERIFY_PAIRS_PER_TASK, max(500, -(-len(pairs) // (4 * self.workers))))
            chunks = [pairs[i : i + per_task] for i in range(0, len(pairs), per_task)]  # any cut: the same pairs
            jobs = [
                {"dir": str(base / f"verify{c}"), "pairs": ch.tolist(), "folders": folders, "ngram": step.ngram}
                | {"threshold": step.jaccard}
                for c, ch in enumerate(chunks)
            ]
            self.stage("minhash_dedup (verify)", stages.verify_task, jobs)
            edge_folders = [j["dir"] for j in jobs]
        job = {"dir": str(base / "components"), "edge_folders": edge_folders}
        self.stage("minhash_dedup (components)", stages.components_task, [job])
        return [job["dir"]]

    # ---- what the job leaves -----------------------------------------------------------------------
    def accounting(self, results: list[list[dict]], tasks: int) -> Accounting:
        acct, stage_stats, pii = Accounting(), {}, Counter()
        for stage_results in results:
            for r in stage_results:
                acct.docs_in += r["docs_in"]
                acct.rejected += r["rejected"]
                acct.removed.update(r["counts"])
                pii.update(r.get("pii", {}))
                for raw in r["stages"]:
                    stage_stats.setdefault(raw["name"], StageStats(raw["name"])).add(StageStats(**raw))
                left = r["docs_in"] - r["rejected"] - sum(r["counts"].values())
                assert r["docs_in"] == 0 or left == r["kept"], "a read task's accounting does not add up"
        acct.stages = list(stage_stats.values())
        if self.cfg.pii:
            acct.extra["pii_masked"] = dict(pii)
        acct.extra.update(files=len(self.files), tasks=tasks)
        return acct

    def outputs(self, folders: list[list[str]], results: list[list[dict]], acct: Accounting) -> None:
        """documents.jsonl.gz, rejects.jsonl, removed/ and the token corpus, from the tasks' folders (`folders`:
        each stage's, read first, the outputs' last)."""
        t0 = time.time()
        out, finals = self.out, [Path(f) for f in folders[-1]]
        concat_members(finals, "documents.jsonl.gz", out / "documents.jsonl.gz")
        with open(out / "rejects.jsonl", "wb") as f:
            for folder in folders[0]:
                f.write((Path(folder) / "rejects.jsonl").read_bytes())
        if self.cfg.keep_removed:
            names = sorted({m for rs in results for r in rs for m in r["members"] if m != "documents.jsonl.gz"})
            owners = [Path(f) for stage in folders for f in stage]
            for name in names:
                concat_members(owners, name, out / "removed" / name)
        self.timing["write"] = {"wall": time.time() - t0}
        tok_cfg = self.cfg.tokenize
        if tok_cfg is not None and sum(r["kept"] for r in results[-1]):
            self.tokenize(finals, results[-1], tok_cfg, acct)

    def tokenize(self, finals: list[Path], last: list[dict], tok_cfg, acct: Accounting) -> None:
        from ..corpus_format import tokenize_stage

        t0 = time.time()
        tok = make_tokenizer(finals, tok_cfg, self.out)
        self.timing["tokenizer"] = {"wall": time.time() - t0}
        first = np.cumsum([0] + [r["kept"] for r in last]).tolist()
        spec, described, cut = tok_cfg.buckets, {}, None
        parts_ = buckets.names(self.cfg.source, spec)
        if spec is not None:
            cut = {"by": spec.by, "edges": buckets.cuts(finals, spec.quantiles)}
            described = {p: {"bucket": buckets.describe(spec.by, spec.quantiles, cut["edges"], k)}
                         for k, p in enumerate(parts_)}  # fmt: skip
        base = self.job_dir / "tokenize"
        jobs = [
            {
                "dir": str(base / f"t{t}"),
                "folder": str(f),
                "first_ordinal": first[t],
                "tokenizer": str(tok),
                "seq_len": tok_cfg.seq_len,
                "val_fraction": tok_cfg.val_fraction,
                "parts": parts_,
                "buckets": cut,
            }
            for t, f in enumerate(finals)
        ]
        res = self.stage("tokenize", tokenize_task, jobs)
        meta = merge_tokenized([Path(j["dir"]) for j in jobs], res, self.out, tok_cfg.seq_len, described)
        size = sum(p["bytes"] for r in res for p in r["parts"].values())
        docs = sum(p["documents"] for r in res for p in r["parts"].values())
        acct.stages.append(tokenize_stage(meta, docs, size))
        estimate_tokens(acct)
