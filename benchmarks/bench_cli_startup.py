"""Start-up time of the `featuremaps` command line: help, version, a usage error, a command's help.

Each case runs the console script's entry (``_featuremaps_cli.main``, what pip's ``featuremaps`` runs) in a
fresh process, interleaved with the other cases, and prints the median wall time, whether PyTorch was
imported, and the bare interpreter's start-up for scale. Goal (issue #14.5): under 0.5 s for help, version
and usage errors (it was 2.5 s, with PyTorch imported before ``main``). For where the time goes, run
``python -X importtime -c "from _featuremaps_cli import main; main()" --help``.

Usage::

    python benchmarks/bench_cli_startup.py [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

CASES = {
    "featuremaps --help": ["--help"],
    "featuremaps --version": ["--version"],
    "featuremaps nope (usage error)": ["nope"],
    "featuremaps maps --help": ["maps", "--help"],
    "featuremaps maps --top-k 0 (usage)": ["maps", "--top-k", "0"],
    "featuremaps cam --help": ["cam", "--help"],
}

# Runs the entry point, then says on stderr whether torch was imported (after the command's own output).
ENTRY = (
    "import sys, atexit\n"
    "atexit.register(lambda: sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules)))\n"
    "from _featuremaps_cli import main\n"
    "main()\n"
)


def run(argv: list[str], env: dict[str, str]) -> tuple[float, bool]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", ENTRY, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    return seconds, "TORCH=True" in proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))
    bare = [sys.executable, "-c", "pass"]
    times: dict[str, list[float]] = {name: [] for name in ["python -c pass", *CASES]}
    torch_seen: dict[str, bool] = {}
    for _ in range(args.reps):  # interleaved: every case once per round
        t0 = time.perf_counter()
        subprocess.run(bare, env=env, check=True)
        times["python -c pass"].append(time.perf_counter() - t0)
        for name, argv in CASES.items():
            seconds, torch_seen[name] = run(argv, env)
            times[name].append(seconds)
    print(f"\nfeaturemaps start-up, median of {args.reps} fresh processes")
    for name, values in times.items():
        note = "" if name not in torch_seen else ("imports torch" if torch_seen[name] else "no torch")
        print(f"  {name:<36} {statistics.median(values) * 1e3:8.1f} ms   {note}")


if __name__ == "__main__":
    main()
