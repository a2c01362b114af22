"""Interleaved A/B of ``quantir upscale`` / ``enhance`` end to end: this tree against another checkout.

    git worktree add /tmp/old <commit>
    python benchmarks/photo_path_ab.py --photo data/samples/train/<a 10+ MP photo> --old-src /tmp/old/src \
        --case enhance:4000x3000:jpg --pairs 20

On a shared 2-core box the end-to-end time of one command moves by 10-15 % between runs, more than
a few-percent change in the photo path. Here each pair runs both versions back to back, in
alternating order, in fresh processes (``photo_path.RUN_CLI``: wall time from the CLI's entry,
imports excluded, and peak RSS), and the paired differences new - old are summarised: their mean
with its standard error, their median, and in how many pairs the new version was faster. The input
is made as ``photo_path.py`` makes it (the photo resized with LANCZOS, saved as JPEG q95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from photo_path import RUN_CLI, case_arguments, case_input  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def run_once(src_dir: Path, cmd: str, inp: Path, out: Path, threads: int) -> tuple[float, float]:
    """(seconds, peak GB) of one command in a fresh process that imports quantir from ``src_dir``."""
    env = dict(os.environ, PYTHONPATH=str(src_dir))
    res = subprocess.run([sys.executable, "-c", RUN_CLI, cmd, str(inp), "-o", str(out), "--overwrite", "--quiet",
                          "--threads", str(threads)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{cmd} ({src_dir}) failed: {res.stderr.strip().splitlines()[-1]}")
    wall, rss_kb, _ = res.stdout.split()[-3:]
    return float(wall), int(rss_kb) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    case_arguments(ap)
    ap.add_argument("--old-src", type=Path, required=True, help="the other checkout's src/ folder")
    ap.add_argument("--pairs", type=int, default=20)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"new": [], "old": []}
    with tempfile.TemporaryDirectory() as tmp:
        cmd, _, _, inp, out = case_input(args.photo, args.case, Path(tmp))
        for k in range(args.pairs):
            order = [("new", SRC), ("old", args.old_src)]
            for name, src_dir in order if k % 2 == 0 else order[::-1]:
                runs[name].append(run_once(src_dir, cmd, inp, out, args.threads))
            print(f"pair {k + 1}/{args.pairs}: new {runs['new'][-1][0]:.2f} s, old {runs['old'][-1][0]:.2f} s",
                  file=sys.stderr, flush=True)
    diffs = [a[0] - b[0] for a, b in zip(runs["new"], runs["old"])]
    summary = {"case": args.case, "threads": args.threads, "pairs": args.pairs, "old_src": str(args.old_src),
               "new_median_s": statistics.median(t for t, _ in runs["new"]),
               "old_median_s": statistics.median(t for t, _ in runs["old"]),
               "diff_mean_s": statistics.mean(diffs),
               "diff_se_s": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
               "diff_median_s": statistics.median(diffs), "new_faster": sum(d < 0 for d in diffs),
               "new_peak_gb": max(g for _, g in runs["new"]), "old_peak_gb": max(g for _, g in runs["old"]),
               "runs": {k: [t for t, _ in v] for k, v in runs.items()}}
    se = f" (SE {summary['diff_se_s']:.3f})" if summary["diff_se_s"] is not None else ""
    print(f"{args.case}, --threads {args.threads}: new median {summary['new_median_s']:.3f} s, old "
          f"{summary['old_median_s']:.3f} s; paired new - old: mean {summary['diff_mean_s']:+.3f} s{se}, median "
          f"{summary['diff_median_s']:+.3f} s, new faster in {summary['new_faster']}/{args.pairs}; peak RSS new "
          f"{summary['new_peak_gb']:.2f} GB, old {summary['old_peak_gb']:.2f} GB")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
