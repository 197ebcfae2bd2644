"""Run by prepare_throughput.py with the Python of a venv that has datatrove: its filters and MinHash
signatures on the benchmark's documents. Prints JSON: per filter, seconds and each document's decision."""

import json
import sys
import time


def main(docs_path: str) -> None:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    rows = [json.loads(line) for line in open(docs_path)]
    filters = {
        "gopher_quality": GopherQualityFilter(),
        "gopher_repetition": GopherRepetitionFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(exclusion_writer=None),
    }
    out = {}
    for name, f in filters.items():
        docs = [Document(text=r["text"], id=r["id"]) for r in rows]
        t = time.process_time()
        decisions = []
        for d in docs:
            r = f.filter(d)
            decisions.append(r is True or (isinstance(r, tuple) and r[0]))
        out[name] = {"seconds": time.process_time() - t, "keep": decisions}
    sig = MinhashDedupSignature(output_folder="/tmp/dt-minhash", config=MinhashConfig())
    t = time.process_time()
    for r in rows:
        sig.get_signature(sig.get_shingles(r["text"]))
    out["minhash_signatures"] = {"seconds": time.process_time() - t}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
