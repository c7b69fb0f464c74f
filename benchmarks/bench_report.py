"""End-to-end time and size of `featuremaps report` on the embedded default model and the cat photo.

Runs the real command (a fresh process each time, so imports and model loading
count), medians over repetitions, and prints wall seconds, CPU seconds (user +
system of the command: steadier than wall time on a shared machine), file
size, layers and channels embedded. Goal on a 2-core machine: under 5 s and
under 20 MB with all layers.

``--against DIR`` also runs the command from another source tree (e.g. an
older checkout's ``src``), interleaved with this one (one run of each per
round), so a before/after comparison sees the same machine load, and ends
with the two side by side (medians, and this tree's share of the other's).
``--threads N`` sets ``OMP_NUM_THREADS`` for the command (e.g. 1: CPU
seconds that other jobs on the machine disturb less). Each tree first runs
once untimed, with bytecode caching on (as after ``pip install``), so no
timed run compiles the package's sources.

Usage::

    python benchmarks/bench_report.py [--reps 3] [--no-cams] [--against OLD/src] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-cams", action="store_true")
    parser.add_argument("--against", default=None, help="another source tree to compare with, run interleaved")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the command")
    args = parser.parse_args()
    threads = {} if args.threads is None else {"OMP_NUM_THREADS": str(args.threads)}
    trees = {"this": os.environ.get("PYTHONPATH", "")}
    if args.against:
        trees["against"] = str(Path(args.against).resolve())
    folder = Path(tempfile.mkdtemp())
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for rep in range(-1, args.reps):  # round -1: untimed, writes the bytecode caches and warms the disk cache
        for label, path in trees.items():
            env = dict(base_env, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=path, **threads)
            out = folder / f"{label}.html"
            cmd = [sys.executable, "-m", "featuremaps", "report", "-o", str(out)] + (["--no-cams"] if args.no_cams else [])
            timed = _run(cmd, env)
            if rep >= 0:
                runs[label].append(timed)
    for label in trees:
        out = folder / f"{label}.html"
        html = out.read_text(encoding="utf-8")
        data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
        meta = data["meta"]
        cams = data.get("cams") or {}
        n_cams = sum(len(c["maps"]) for c in cams.get("classes", []))
        seconds = statistics.median(w for w, _ in runs[label])
        cpu = statistics.median(c for _, c in runs[label])
        size = out.stat().st_size
        name = "" if label == "this" else f" [{trees[label]}]"
        print(f"featuremaps report (default model, cat photo), median of {args.reps} runs{name}")
        print(f"  seconds      {seconds:6.2f} s   (goal < 5 s: {seconds / 5:.2f} of the budget)")
        print(f"  CPU seconds  {cpu:6.2f} s   (user + system)")
        print(f"  file size    {size / 1e6:6.2f} MB  (goal < 20 MB: {size / 20e6:.2f} of the budget)")
        print(f"  layers       {meta['layers_total']}")
        print(f"  channels     {meta['channels']}")
        print(f"  CAM maps     {n_cams}")
    if len(trees) == 2:
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
        (w1, c1), (w0, c0) = med["this"], med["against"]
        print(f"side by side, median of {args.reps} interleaved runs; load average {os.getloadavg()[0]:.1f} at the end")
        print(f"  {'':14}{'this':>9}{'against':>9}{'this/against':>14}")
        print(f"  {'seconds':14}{w1:9.2f}{w0:9.2f}{w1 / w0:14.2f}")
        print(f"  {'CPU seconds':14}{c1:9.2f}{c0:9.2f}{c1 / c0:14.2f}")


if __name__ == "__main__":
    main()
