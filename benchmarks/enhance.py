"""Table 3: QATIE enhancement, the paper net vs its INT8-friendly variant, and what each change does.

Variants (c=16 on CPU): the paper's HybridMixUNet (InstanceNorm, LeakyReLU, concat skips, nearest
resize) and the changes that make it deployable, added one at a time, ending at qatie_unet_int8.
For each: FP32, PTQ (percentile), QAT fake-quant, the exported INT8 TFLite, whether the TFLite is
all-int8, its parity with fake-quant, and how many int8 levels the tanh skip branches keep inside
their concat (the reference TFLite kept about 17 and 5 of 256).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common import (BenchSettings, eval_artifact, load_enhance_table, make_config, merge_entry, run_training,
                    standalone)

from quantir.evaluate.bench import benchmark
from quantir.export.config import ExportConfig
from quantir.export.from_checkpoint import export_checkpoint
from quantir.train.data import eval_pairs
from quantir.quant import checkpoint
from quantir.quant.graph_ops import REQUANT_META

STEPS = {
    # label: model options on top of qatie_unet (paper, c=16): the int8 changes accumulate
    "paper (InstanceNorm, LeakyReLU, concat, resize)": {},
    "paper, c=32 (the published width)": {"channels": 32},
    "+ BatchNorm (folded)": {"norm": "batch"},
    "+ ReLU": {"norm": "batch", "act": "relu"},
    # Since both nets export nearest x2 as depth-to-space, the old "+ depth-to-space" row is this one.
    "+ split skip fusions (= qatie_unet_int8)": {"norm": "batch", "act": "relu", "split_fusion": True,
                                                 "upsample": "d2s"},
}
LATENCY_HW = (720, 1280)  # the phone-photo size for the latency column
VARIANT_SLUGS = [f"v{k}" for k in range(len(STEPS))]


def tanh_concat_levels(qat_ckpt: Path) -> int | None:
    """Fewest int8 levels a tanh skip branch keeps on [-1, 1] after entering a concat (256 = untouched)."""
    q = checkpoint.build_qat(checkpoint.load(qat_ckpt))
    gm = q.graph_module
    levels = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.tanh.default:
            frontier = list(node.users)
            while frontier:
                u = frontier.pop()
                if u.op == "call_module" or u.meta.get(REQUANT_META):  # fake quantizers, the requantizing MUL
                    frontier += list(u.users)
                elif u.op == "call_function" and u.target in (torch.ops.aten.cat.default,):
                    for user in u.users:
                        if user.op == "call_module" and hasattr(gm.get_submodule(user.target), "scale"):
                            scale = float(gm.get_submodule(user.target).scale.reshape(-1)[0])
                            levels.append(int(round(2.0 / scale)) + 1)
    return min(levels) if levels else 256


def run(settings: BenchSettings) -> dict:
    out = settings.out / "enhance"
    result = {"quick": settings.quick, "data": settings.data_description("enhance"),
              "paper_dped": {"FP32": 22.194, "INT8 QAT": 21.050, "INT8 PTQ": 20.576},
              "variants": {}}
    steps = {"fp32": settings.steps(4000, 700), "qat": settings.steps(800, 150)}
    labels = list(STEPS) if not settings.smoke else [list(STEPS)[0], list(STEPS)[-1]]
    slug = dict(zip(STEPS, VARIANT_SLUGS))
    labels = [x for x in labels if settings.variants is None or slug[x] in settings.variants]
    for label in labels:
        opts = {"channels": 16, **STEPS[label]}
        print(f"[enhance] {label}", flush=True)
        base = {
            "model": "qatie_unet", "model_options": opts,
            "data": {"patch": 64, "batch": 8, "val_size": 192},
            "stage1": {"steps": steps["fp32"], "lr": 1.0e-3, "warmup": 100, "val_every": max(100, steps["fp32"] // 5),
                       "ckpt_every": max(100, steps["fp32"] // 5),
                       "loss": {"l1": 0.0, "psnr_y": 2.0, "cosine": 1.0, "outlier": 1.0}},
            "stage2": {"enabled": False},
            "qat": {"calib_batches": 16,
                    "train": {"steps": steps["qat"], "lr": 1.0e-5, "lr_min": 1.0e-7, "ema": 0.0,
                              "val_every": max(50, steps["qat"] // 4), "ckpt_every": max(50, steps["qat"] // 4),
                              "loss": {"l1": 0.2, "kd": 1.0, "kd_confidence": False}}},
            "export": {"enabled": True, "formats": ["tflite"], "parity_limit": 6 if settings.quick else 16},
        }
        cfg = make_config(settings, "enhance", base)
        run_dir = out / slug[label]
        res = run_training(cfg, run_dir)
        ev = res["eval"]
        row = {"input": ev["input"], "FP32": ev["FP32 (fused)"], "INT8 fake-quant (QAT)": ev["INT8 fake-quant"],
               "INT8 TFLite (QAT)": ev.get("INT8 TFLite"), "parity": res["parity"].get("tflite"),
               "export_error": res.get("export_error"),
               "tanh_concat_levels": tanh_concat_levels(run_dir / "checkpoints" / f"qat_final{checkpoint.SUFFIX}"),
               "channels": opts["channels"]}
        try:
            export_checkpoint(run_dir / "checkpoints" / f"deploy_fp32{checkpoint.SUFFIX}", run_dir / "ptq",
                              ExportConfig(formats=("tflite",)), ptq="percentile", calib_dir=settings.calib_dir("enhance"))
            row["INT8 TFLite (PTQ percentile)"] = eval_artifact(run_dir / "ptq" / "model_int8.tflite", eval_pairs(cfg), 0)
        except (ValueError, RuntimeError) as err:
            row["INT8 TFLite (PTQ percentile)"] = None
            row["ptq_error"] = " ".join(str(err).split())[:300]
        result["variants"][label] = row
        merge_entry(settings.out / "enhance.json", result, label, STEPS, sections=("variants",))
    measure_latency(settings, result)
    return result


def measure_latency(settings: BenchSettings, result: dict) -> None:
    """This job's variants' QAT TFLite at LATENCY_HW, interleaved in one run (its timings compare;
    run_all.py's one-variant jobs time each alone)."""
    slug = dict(zip(STEPS, VARIANT_SLUGS))
    files = {label: settings.out / "enhance" / slug[label] / "export" / "model_int8.tflite" for label in result["variants"]}
    files = {k: v for k, v in files.items() if v.is_file()}
    rows = benchmark([str(f) for f in files.values()], hw=LATENCY_HW, threads=settings.threads,
                     runs=5 if settings.quick else 20, warmup=1)
    for label, row in zip(files, rows):
        result["variants"][label]["latency"] = row
        merge_entry(settings.out / "enhance.json", result, label, STEPS, sections=("variants",))


def latency_only() -> None:
    """Re-time the finished variants of --out in one interleaved run (a quiet machine), keeping every
    quality number: the parallel jobs of run_all.py time each variant alone, beside other trainings."""
    import argparse

    ap = argparse.ArgumentParser(description=latency_only.__doc__.splitlines()[0])
    ap.add_argument("--latency-only", action="store_true", required=True)
    ap.add_argument("--out", default="bench-runs")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    result = load_enhance_table(Path(a.out))
    measure_latency(BenchSettings(Path(a.out), result["quick"], threads=a.threads), result)


if __name__ == "__main__":
    import sys

    latency_only() if "--latency-only" in sys.argv else standalone(run, "dped")
