"""Summarise py-spy raw profiles of the predictor (``tests/bench/service_bench.py``'s YOLO_BENCH_PROFILE).

    python3 hack/gpu/profile_summary.py OUT/profile.all.txt OUT/profile.gil.txt

Per thread: samples (at 250 Hz over 3 s, 750 = always busy) and the leaf frames it spent them in. In the
``--gil`` profile the samples of all threads together say how often some thread held the GIL.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path


def summarise(path: Path, top: int = 8) -> None:
    threads: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += int(count)
        leaves[thread][frames[-1][:110]] += int(count)
    print(f"== {path.name}: {sum(threads.values())} samples")
    for thread, count in threads.most_common(10):
        print(f"  {count:6d}  {thread}")
        for frame, n in leaves[thread].most_common(top):
            print(f"          {n:5d}  {frame}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        if Path(name).is_file():
            summarise(Path(name))
        else:
            print(f"== {name}: missing")
