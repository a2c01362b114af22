"""Run every benchmark and write BENCHMARKS.md: ``make bench`` (full) or ``make bench-quick``.

    python benchmarks/run_all.py [--quick] [--out bench-runs] [--div2k ROOT] [--dped ROOT] [--jobs 2]

Quick mode trains short models (under 30 minutes on 2 cores); full mode takes a few hours. The
trainings run as independent jobs (one per SR network, one per enhancement variant) on --jobs
single-thread workers (small convolutions scale poorly across threads: two single-thread
processes finish sooner than one two-thread process); the latency table then runs alone on
--threads threads. Results are kept as JSON in --out; finished runs are
reused when their config is unchanged, and a run killed part-way (same config) is resumed from
its last checkpoint.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from common import ROOT, BenchSettings, load_json, save_json

from quantir.errors import DataError

import enhance  # noqa: E402
import odm_ablation  # noqa: E402
import report  # noqa: E402
import speed  # noqa: E402
import sr_quant  # noqa: E402

PARTS = {"sr": sr_quant.run, "odm": odm_ablation.run, "enhance": enhance.run, "speed": speed.run}
RESULT_FILES = {"sr": "sr_quant.json", "odm": "odm_ablation.json", "enhance": "enhance.json"}  # filled job by job


def training_jobs(parts: list[str]) -> list[tuple[str, list[str]]]:
    """Independent units of training work, the long SR chains first: one per SR network (its table-1
    runs, then its ODM rows, which start from the same FP32 weights) and one per enhancement variant."""
    jobs = []
    chain = [p for p in ("sr", "odm") if p in parts]
    if chain:
        jobs += [(f"{'+'.join(chain)} {m}", ["--only", *chain, "--models", m]) for m in sr_quant.MODELS]
    if "enhance" in parts:
        jobs += [(f"enhance {v}", ["--only", "enhance", "--variants", v]) for v in enhance.VARIANT_SLUGS]
    return jobs


def _stream(proc: subprocess.Popen, tag: str, log: Path) -> None:
    """Everything goes to the job's log; the console gets the benchmark's own progress lines."""
    with open(log, "w") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if line.startswith(("[", "  training", "  reusing", "==")) or "Error" in line:
                print(f"[{tag}] {line}", end="", flush=True)


def run_parallel(args, parts: list[str], out: Path) -> None:
    """Run the training jobs in --jobs single-thread subprocesses (this script with --job), each
    worker taking the next job as soon as it is free."""
    passthrough = [a for a in ("--quick", "--smoke") if getattr(args, a[2:])]
    for flag in ("div2k", "dped"):
        if getattr(args, flag):
            passthrough += [f"--{flag}", getattr(args, flag)]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue, running, failed = training_jobs(parts), [], []
    while queue or running:
        while queue and len(running) < args.jobs:
            tag, job_args = queue.pop(0)
            cmd = [sys.executable, __file__, "--job", "--out", str(out), "--threads", "1", *job_args, *passthrough]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            log = logs / (tag.replace(" ", "_").replace("+", "_") + ".log")
            t = threading.Thread(target=_stream, args=(proc, tag, log), daemon=True)
            t.start()
            running.append((proc, t, tag, log))
        time.sleep(1.0)
        for item in [r for r in running if r[0].poll() is not None]:
            proc, t, tag, log = item
            t.join()
            running.remove(item)
            if proc.returncode:
                print("".join(log.read_text().splitlines(keepends=True)[-20:]), flush=True)
                failed.append(f"{tag} (log: {log})")
    if failed:
        sys.exit("benchmark job failed: " + ", ".join(failed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short trainings (< 30 min on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "bench-runs"))
    ap.add_argument("--div2k", help="DIV2K root (DIV2K_train_HR, DIV2K_valid_HR, ...) for the SR tables")
    ap.add_argument("--dped", help="DPED root for the enhancement table")
    ap.add_argument("--only", nargs="+", choices=list(PARTS), help="run a subset")
    ap.add_argument("--smoke", action="store_true", help="a few steps everywhere (code-path check only)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the latency table (and of --jobs 1)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="parallel single-thread training workers (1: sequential on --threads)")
    ap.add_argument("--models", nargs="+", choices=list(sr_quant.MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--variants", nargs="+", choices=enhance.VARIANT_SLUGS, help=argparse.SUPPRESS)
    ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)  # one job of --jobs N: no report
    args = ap.parse_args()
    settings = BenchSettings(Path(args.out), args.quick, args.div2k, args.dped, threads=args.threads,
                             smoke=args.smoke, models=tuple(args.models) if args.models else None,
                             variants=tuple(args.variants) if args.variants else None)
    if not (settings.samples / "train").is_dir() and not args.div2k:
        sys.exit("sample photos missing: run 'quantir data fetch samples --out data/samples' (make samples)")
    torch.set_num_threads(settings.threads)
    parts = args.only or list(PARTS)
    try:  # a wrong --div2k / --dped folder: one line now, not a traceback from every job later
        for task in ("sr", "enhance"):
            settings.calib_dir(task), settings.parity_dir(task)
    except DataError as err:
        sys.exit(str(err))
    if args.job:
        for name in parts:
            PARTS[name](settings)
        return
    settings.out.mkdir(parents=True, exist_ok=True)
    for name, file in RESULT_FILES.items():  # no rows left over from an earlier run with other settings
        if name in parts:
            (settings.out / file).unlink(missing_ok=True)
    command = " ".join(["python benchmarks/run_all.py"] + sys.argv[1:])
    commands = load_json(settings.out / "commands.json") or {}  # which command produced each table
    t0 = time.time()
    training = [p for p in parts if p != "speed"]
    if training and args.jobs > 1:
        print(f"== {', '.join(training)}: {args.jobs} parallel workers (logs: {settings.out}/logs)", flush=True)
        run_parallel(args, training, settings.out)
    else:
        for name in training:
            print(f"== {name}", flush=True)
            PARTS[name](settings)
    if "speed" in parts:
        print("== speed", flush=True)
        speed.run(settings)
    for name in parts:
        commands[name] = command
    commands.setdefault("wall_s", {})[command] = round(time.time() - t0)
    save_json(commands, settings.out / "commands.json")
    target = ROOT / "BENCHMARKS.md" if not args.smoke else settings.out / "BENCHMARKS.smoke.md"
    report.write(settings.out, target, command)
    print(f"all benchmarks: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
