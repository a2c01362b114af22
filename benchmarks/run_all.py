"""Run every benchmark and write BENCHMARKS.md: ``make bench`` (full) or ``make bench-quick``.

    python benchmarks/run_all.py [--quick] [--out bench-runs] [--div2k ROOT] [--dped ROOT]

Quick mode trains short models (about 30 minutes on 2 cores); full mode takes a few hours. Results
are also kept as JSON in --out; finished runs are reused when their config is unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from common import ROOT, BenchSettings, load_json, save_json

import enhance  # noqa: E402
import odm_ablation  # noqa: E402
import report  # noqa: E402
import speed  # noqa: E402
import sr_quant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short trainings (< 30 min on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "bench-runs"))
    ap.add_argument("--div2k", help="DIV2K root (DIV2K_train_HR, DIV2K_valid_HR, ...) for the SR tables")
    ap.add_argument("--dped", help="DPED root for the enhancement table")
    ap.add_argument("--only", nargs="+", choices=["sr", "odm", "enhance", "speed"], help="run a subset")
    ap.add_argument("--smoke", action="store_true", help="a few steps everywhere (code-path check only)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = BenchSettings(Path(args.out), args.quick, args.div2k, args.dped, threads=args.threads,
                             smoke=args.smoke)
    if not (settings.samples / "train").is_dir() and not args.div2k:
        sys.exit("sample photos missing: run 'quantir data fetch samples --out data/samples' (make samples)")
    torch.set_num_threads(settings.threads)
    parts = args.only or ["sr", "odm", "enhance", "speed"]
    command = " ".join(["python benchmarks/run_all.py"] + sys.argv[1:])
    commands = load_json(settings.out / "commands.json") or {}  # which command produced each table
    t0 = time.time()
    for name, fn in (("sr", sr_quant.run), ("odm", odm_ablation.run), ("enhance", enhance.run),
                     ("speed", speed.run)):
        if name in parts:
            t = time.time()
            print(f"== {name}", flush=True)
            fn(settings)
            commands[name] = command
            save_json(commands, settings.out / "commands.json")
            print(f"== {name} done in {time.time() - t:.0f} s", flush=True)
    target = ROOT / "BENCHMARKS.md" if not args.smoke else settings.out / "BENCHMARKS.smoke.md"
    report.write(settings.out, target, command)
    print(f"all benchmarks: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
