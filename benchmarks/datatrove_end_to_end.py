"""Run by prepare_end_to_end.py with the Python of a venv that has datatrove: datatrove's own pipeline equivalent
to `lmstack prepare`'s, on LocalPipelineExecutor: read -> Gopher repetition, Gopher quality, C4, FineWeb
filters -> exact dedup (its 3 stages) -> MinHash (its 4 stages) -> tokenize, with the given tokenizer.
Prints JSON: wall seconds, CPU seconds (the time its steps report, as its pool workers' own CPU time is not
visible here), peak memory of the largest process seen, and the ids of the kept documents.

    python datatrove_end_to_end.py INPUT_DIR WORK_DIR TOKENIZER_JSON WORKERS
"""

import json
import resource
import sys
import time


def text_of(doc) -> str:
    return doc.text


def main(inputs: str, work: str, tokenizer: str, workers: int) -> None:
    import glob

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    tasks = len(glob.glob(f"{inputs}/*.jsonl.gz"))
    exact = ExactDedupConfig(content_getter=text_of)
    mh = MinhashConfig()
    buckets = mh.num_buckets

    def run(pipeline, n_tasks, name):
        LocalPipelineExecutor(pipeline, tasks=n_tasks, workers=workers, logging_dir=f"{work}/logs/{name}").run()

    t0 = time.time()
    run(
        [
            JsonlReader(inputs, glob_pattern="*.jsonl.gz"),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(),
            FineWebQualityFilter(),
            JsonlWriter(f"{work}/filtered"),
        ],
        tasks,
        "filter",
    )
    run(
        [JsonlReader(f"{work}/filtered"), ExactDedupSignature(f"{work}/exact_sigs", exact)],
        tasks,
        "exact_sigs",
    )
    run([ExactFindDedups(f"{work}/exact_sigs", f"{work}/exact_dups", exact)], 1, "exact_find")
    run(
        [
            JsonlReader(f"{work}/filtered"),
            ExactDedupFilter(f"{work}/exact_dups", exact),
            JsonlWriter(f"{work}/exact"),
        ],
        tasks,
        "exact_filter",
    )
    run([JsonlReader(f"{work}/exact"), MinhashDedupSignature(f"{work}/mh_sigs", mh)], tasks, "mh_sigs")
    run([MinhashDedupBuckets(f"{work}/mh_sigs", f"{work}/mh_buckets", config=mh)], buckets, "mh_buckets")
    run([MinhashDedupCluster(f"{work}/mh_buckets", f"{work}/mh_remove", config=mh)], 1, "mh_cluster")
    run(
        [
            JsonlReader(f"{work}/exact"),
            MinhashDedupFilter(f"{work}/mh_remove"),
            JsonlWriter(f"{work}/deduped"),
        ],
        tasks,
        "mh_filter",
    )
    run(
        [
            JsonlReader(f"{work}/deduped"),
            DocumentTokenizer(f"{work}/tokens", tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>"),
        ],
        tasks,
        "tokenize",
    )
    wall = time.time() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    kept = []
    import gzip

    for path in sorted(glob.glob(f"{work}/deduped/*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            kept += [json.loads(line)["id"] for line in f]
    busy = 0.0  # the time its steps report working (its pool's workers are not this process's reaped children)
    for stats in glob.glob(f"{work}/logs/*/stats.json"):
        busy += sum(step["time_stats"]["total"] for step in json.load(open(stats)))
    json.dump(
        {
            "seconds": wall,
            "cpu": max(busy, me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime),
            "peak_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024,
            "kept": kept,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
