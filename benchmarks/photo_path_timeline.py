"""When each tile worker starts and ends its tiles in one ``quantir upscale`` / ``enhance`` run, and
what a TFLite allocation for that tile costs and holds.

    python benchmarks/photo_path_timeline.py --photo data/samples/train/<a 10+ MP photo> --case enhance:4000x3000:jpg

Each run is a fresh process (imports excluded from the clock, as in ``photo_path.py``): every
worker's ``run_into`` (``run`` in older checkouts) is wrapped to record its start, end and CPU time
per tile. Printed per run: when each worker started its first tile (from the CLI's entry), the end
of the last tile and of the command, the workers' summed CPU time in their tiles, their summed
idle time between their first tile's start and their last tile's end (handing tiles over, and
waiting for the GIL) with each wait over 5 ms as (when it began, how long), the main thread's CPU
time, and the tiles' pixels against the photo's. Then, in another fresh process, one
``allocate_tensors`` for the tile shape the run used: its wall time, minor page faults, and the
longest wait of a thread that sleeps 1 ms at a time meanwhile (about the whole allocation: it holds
the GIL). Works with another checkout's code too (``PYTHONPATH=/tmp/old/src``): it only uses what
the photo path had before.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))
from photo_path import case_arguments, case_input  # noqa: E402

CHILD = r"""
import json, sys, threading, time
import quantir.infer as infer
from quantir.cli import main
lock, tiles = threading.Lock(), []
init = infer.Processor.__init__
def wrapped_init(self, *a, **k):
    init(self, *a, **k)
    for rt in self.workers:
        # the tile workers call run_into (since 2026-12-07); an older checkout's call run
        name = "run_into" if "run_into" in dir(rt) else "run"
        run = getattr(rt, name)
        def timed(x, *cut, run=run):
            t, c = time.perf_counter(), time.thread_time()
            y = run(x, *cut)
            with lock:
                tiles.append((threading.current_thread().name, t - T0, time.perf_counter() - T0,
                              time.thread_time() - c, x.shape[0], x.shape[1]))
            return y
        setattr(rt, name, timed)
infer.Processor.__init__ = wrapped_init
T0 = time.perf_counter()
code = main(sys.argv[1:])
end = time.perf_counter() - T0
spans, gaps = {}, []  # per worker: (first tile's start, last tile's end so far, time inside tiles)
for name, start, stop, *_ in sorted(tiles, key=lambda t: t[1]):
    first, last, busy = spans.get(name, (start, start, 0.0))
    if start - last > 0.005:  # this worker waited more than 5 ms for its next tile
        gaps.append((round(last, 3), round(start - last, 3)))
    spans[name] = (first, stop, busy + stop - start)
print(json.dumps({"e2e_s": end, "first_tile_start_s": sorted(first for first, _, _ in spans.values()),
                  "last_tile_end_s": max(t[2] for t in tiles), "tiles": len(tiles),
                  "tile_px": sum(t[4] * t[5] for t in tiles), "tile_shape": list(tiles[0][4:6]),
                  "workers_cpu_s": sum(t[3] for t in tiles),
                  "workers_idle_s": sum(last - first - busy for first, last, busy in spans.values()),
                  "idle_gaps_over_5ms": sorted(gaps),
                  "main_cpu_s": time.thread_time(), "code": code}))
"""

ALLOC = r"""
import json, resource, sys, threading, time
import numpy as np
from quantir.evaluate.predictors import load_model
from quantir.infer import builtin_model
task, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rt = load_model(builtin_model(task), threads=1)
gaps, stop = [], []
def sleeper():
    last = time.perf_counter()
    while not stop:
        time.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
th = threading.Thread(target=sleeper)
th.start()
time.sleep(0.02)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = time.perf_counter()
rt.interpreter.resize_tensor_input(rt.in_index, [1, h, w, 3])
rt.interpreter.allocate_tensors()
took = time.perf_counter() - t
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
time.sleep(0.01)
stop.append(1)
th.join()
print(json.dumps({"alloc_s": took, "minor_faults": faults, "longest_wait_s": max(gaps)}))
"""


def child(code: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr.strip().splitlines()[-1])
    return json.loads(res.stdout.strip().splitlines()[-1])


def rounded(obj):
    if isinstance(obj, float):
        return round(obj, 3)
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return {k: rounded(v) for k, v in obj.items()} if isinstance(obj, dict) else obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    case_arguments(ap)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd, task, (w, h), inp, out = case_input(args.photo, args.case, Path(tmp))
        runs = [child(CHILD, cmd, str(inp), "-o", str(out), "--overwrite", "--quiet", "--threads", str(args.threads))
                for _ in range(args.runs)]
    for r in runs:
        r["tile_px_ratio"] = r["tile_px"] / (w * h)
        print(json.dumps(rounded(r)))
    alloc = child(ALLOC, task, *map(str, runs[0]["tile_shape"]))
    summary = {"case": args.case, "threads": args.threads, "runs": runs, "alloc": alloc,
               "median_first_tile_start_s": [median(r["first_tile_start_s"][k] for r in runs)
                                             for k in range(min(len(r["first_tile_start_s"]) for r in runs))]}
    print(json.dumps(rounded({"alloc_for_tile": runs[0]["tile_shape"], **alloc,
                              "median_first_tile_start_s": summary["median_first_tile_start_s"]})))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
