"""The paper network's INT8 loss with and without stem composition, whole image and interior.

``qat.compose_stem`` (models/mobileone_sr.compose_stem) is exact inside the image, but the
composed form mirror-pads the input where the original zero-pads its stem output, so the two FP32
models differ in a band of about 10 LR pixels at the image border. To keep the two effects apart,
each QAT run's INT8 TFLite is scored against the original FP32 model on the whole image (what the
report and issue 15's acceptance use) and on the interior only (``--margin`` HR pixels shaved off
every side, beyond the border band: pure quantization loss); the composed FP32 model's own
scores give the border effect. RGB PSNR, uint8 outputs, mean over photos.

    python benchmarks/compose_stem.py --fp32 runs/paper_long/checkpoints/deploy_fp32.safetensors \
        --runs runs/paper_long_qat_deploy runs/paper_long_qat_composed --json runs/compose_stem.json

Needs `quantir data fetch samples --out data/samples --sets stress stress-val`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import ROOT

from quantir.data.datasets import sr_pairs
from quantir.data.metrics import psnr, shave
from quantir.export.runtime import load_runtime
from quantir.models.apply import run_uint8
from quantir.models.mobileone_sr import compose_stem
from quantir.quant import checkpoint

SPLITS = ("stress_val", "stress", "eval")


def score(predict, pairs, margin: int) -> dict:
    outs = [(predict(p.input), p.target) for p in pairs]
    return {"full": float(np.mean([psnr(o, t) for o, t in outs])),
            "interior": float(np.mean([psnr(shave(o, margin), shave(t, margin)) for o, t in outs]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp32", required=True, help="the original fused FP32 checkpoint (the reference)")
    ap.add_argument("--runs", nargs="+", required=True, help="QAT run directories (their export/model_int8.tflite)")
    ap.add_argument("--data", default=str(ROOT / "data" / "samples"))
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--margin", type=int, default=30, help="HR pixels shaved for the interior score (10 LR px at x3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fp32 = checkpoint.build_float(checkpoint.load(checkpoint.resolve(a.fp32)))
    fp32.clamp_output = True
    composed = compose_stem(fp32)
    result = {"fp32": a.fp32, "margin": a.margin, "splits": {}}
    for split in a.splits:
        folder = Path(a.data) / split
        if not folder.is_dir():
            print(f"{split}: {folder} not found, skipped")
            continue
        pairs = sr_pairs(folder, 3)
        ref = score(lambda im: run_uint8(fp32, im), pairs, a.margin)
        comp = score(lambda im: run_uint8(composed, im), pairs, a.margin)
        rows = {"FP32": ref, "FP32 composed": comp}
        print(f"\n{split} ({len(pairs)} photos): INT8 TFLite - original FP32, dB")
        print(f"| model | whole image | interior (-{a.margin} px) |\n|---|---:|---:|")
        print(f"| FP32 composed (border effect) | {comp['full'] - ref['full']:+.3f} | "
              f"{comp['interior'] - ref['interior']:+.3f} |")
        for run in a.runs:
            rt = load_runtime(Path(run) / "export" / "model_int8.tflite", threads=a.threads)
            q = rows[run] = score(rt.run, pairs, a.margin)
            print(f"| {run} | {q['full'] - ref['full']:+.3f} | {q['interior'] - ref['interior']:+.3f} |", flush=True)
        result["splits"][split] = rows
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
