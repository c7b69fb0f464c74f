"""End-to-end time and size of `featuremaps report` on the embedded default model and the cat photo.

Runs the real command (a fresh process each time, so imports and model loading
count), medians over repetitions, and prints seconds, file size, layers and
channels embedded. Goal on a 2-core machine: under 10 s and under 20 MB with
all layers.

Usage::

    python benchmarks/bench_report.py [--reps 3] [--no-cams]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-cams", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = Path(tempfile.mkdtemp()) / "report.html"
    cmd = [sys.executable, "-m", "featuremaps", "report", "-o", str(out)] + (["--no-cams"] if args.no_cams else [])
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    html = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
    meta = data["meta"]
    cams = data.get("cams") or {}
    n_cams = sum(len(c["maps"]) for c in cams.get("classes", []))
    seconds = statistics.median(times)
    size = out.stat().st_size
    print(f"featuremaps report (default model, cat photo), median of {args.reps} runs")
    print(f"  seconds      {seconds:6.2f} s   (goal < 10 s: {seconds / 10:.2f} of the budget)")
    print(f"  file size    {size / 1e6:6.2f} MB  (goal < 20 MB: {size / 20e6:.2f} of the budget)")
    print(f"  layers       {meta['layers_total']}")
    print(f"  channels     {meta['channels']}")
    print(f"  CAM maps     {n_cams}")


if __name__ == "__main__":
    main()
