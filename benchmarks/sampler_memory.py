"""Memory of the training sampler as the run grows: the global sample stream is generated in windows from the
seed (`lmstack.data.dataset.MixtureStream`), so a 10^10-sample plan costs no more than a short one. Prints the
peak memory after building the sampler for the plan and reading its first samples, and the rate at which a
resumed run skips the samples before its position (they are drawn and counted, not kept).

    python benchmarks/sampler_memory.py --samples 1e10
"""

from __future__ import annotations

import argparse
import resource
import time

from lmstack.data.dataset import MixtureStream, ResumableSampler


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=float, default=1e10)
    p.add_argument("--blocks", type=int, nargs="+", default=[2_000_000, 500_000, 100_000])  # per source
    args = p.parse_args()
    batch, world = 16, 8
    total = int(args.samples) // (batch * world)
    weights = [[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]]
    start = peak_mb()
    sampler = ResumableSampler(args.blocks, weights, batch, total, 0, 3, world, 0, [0, int(args.samples * 0.9)])
    it = iter(sampler)
    t0 = time.time()
    first = [next(it) for _ in range(200_000)]
    read = time.time() - t0
    print(f"plan: {total * batch * world:.3g} samples over {len(args.blocks)} sources ({sum(args.blocks):,} blocks)")
    print(f"peak memory: {start:.0f} MB at start, {peak_mb():.0f} MB after building it and reading 200,000 samples")
    print(f"reading: {len(first) / read:,.0f} samples/s for this rank")
    stream = MixtureStream(args.blocks, weights, 0, [0, int(args.samples * 0.9)])
    t0 = time.time()
    stream.take(50_000_000, 50_000_001)
    print(
        f"resume: skipping 5e7 samples took {time.time() - t0:.1f} s ({5e7 / (time.time() - t0):,.0f} samples/s); "
        f"peak {peak_mb():.0f} MB"
    )


if __name__ == "__main__":
    main()
