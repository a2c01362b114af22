"""Table 2: ODM ablation at low bits (simulation), the paper's layout (docs/papers.md 2.5).

W4A4 and W2A2 on mobileone_sr and abpn, every row QAT from the same FP32 weights (table 1's):
(a) baseline QAT, (b) + cooperative mismatch regulariser, (c) + weight clipping correction only,
(d) WCC + naive MR, (e) WCC + cooperative MR (= ODM). Inner layers at b bits; the 8-bit image I/O
stays (pixels are 8-bit). Metric: fake-quant PSNR on the evaluation photos.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common import BenchSettings, load_json, make_config, merge_entry, run_training, standalone
from sr_quant import MODELS, fp32_config

from quantir.quant import checkpoint

LAM = 1.0e-5
VARIANTS = {
    "(a) baseline": {},
    "(b) + cooperative MR": {"odm": {"mismatch_weight": LAM, "cooperative": True}},
    "(c) + WCC only": {"weight_clip_percentile": 99.0},
    "(d) WCC + naive MR": {"weight_clip_percentile": 99.0, "odm": {"mismatch_weight": LAM, "cooperative": False}},
    "(e) WCC + cooperative MR (ODM)": {"weight_clip_percentile": 99.0,
                                       "odm": {"mismatch_weight": LAM, "cooperative": True}},
}
# The two choices the paper leaves open (docs/papers.md 2.7), each changed alone from row (e) at W4A4.
CHOICES = {
    "(e) as default: q(X) detached, per-layer similarity": {},
    "(e) with the STE through q(X)": {"detach_q": False},
    "(e) with one similarity for the whole model": {"granularity": "model"},
}
PAPER_EDSR_W2A2_SET5 = {"(a) baseline": 29.94, "(b) + cooperative MR": 30.34, "(c) + WCC only": 31.12,
                        "(d) WCC + naive MR": 30.99, "(e) WCC + cooperative MR (ODM)": 31.50}


def _qat_base(spec: dict, quant: dict, bits: int, steps: int, patch: int) -> dict:
    return {
        "model": spec["model"], "scale": 3, "data": {"patch": patch, "batch": 16},
        "stage1": {"enabled": False}, "stage2": {"enabled": False},
        "qat": {"quant": dict(quant, act_bits=bits, weight_bits=bits), "calib_batches": 16,
                "freeze_ranges_at": 0.9,
                "train": {"steps": steps, "lr": 1.0e-4, "lr_min": 1.0e-6, "ema": 0.0,
                          "val_every": max(50, steps // 4), "ckpt_every": max(50, steps // 4),
                          "loss": {"l1": 1.0, "kd": 0.0}}},
        "export": {"enabled": False},
    }


def run(settings: BenchSettings) -> dict:
    result = {"quick": settings.quick, "lambda_m": LAM, "paper_edsr_w2a2_set5": PAPER_EDSR_W2A2_SET5, "models": {}}
    steps = settings.steps(800, 120)
    choices_too = settings.choices if settings.choices is not None else not settings.quick
    for name, spec in settings.selected(MODELS).items():
        fp32_dir = settings.out / "sr" / name / "fp32"
        run_training(fp32_config(settings, spec), fp32_dir)  # reused when table 1 already trained it
        deploy = str(fp32_dir / "checkpoints" / f"deploy_fp32{checkpoint.SUFFIX}")
        patch = spec["fp32_quick" if settings.quick else "fp32_full"][1]
        result["models"][name] = {}
        for bits in (4, 2):
            rows = {}
            for label, quant in VARIANTS.items():
                print(f"[odm] {name} W{bits}A{bits} {label}", flush=True)
                base = _qat_base(spec, quant, bits, steps, patch)
                slug = label.split(")")[0].strip("(")
                res = run_training(make_config(settings, "sr", base), settings.out / "odm" / name / f"w{bits}" / slug,
                                   init=deploy)
                rows[label] = res["eval"]["INT8 fake-quant"]
                rows[label]["fp32_psnr_rgb"] = res["eval"]["FP32 (fused)"]["psnr_rgb"]
                rows[label]["bicubic_psnr_rgb"] = res["eval"]["bicubic"]["psnr_rgb"]
            result["models"][name][f"W{bits}A{bits}"] = rows
        choices = {}
        for label, change in (CHOICES if choices_too else {}).items():
            odm = dict(VARIANTS["(e) WCC + cooperative MR (ODM)"]["odm"], **change)
            quant = dict(VARIANTS["(e) WCC + cooperative MR (ODM)"], odm=odm)
            per_seed = []
            for seed in range(settings.seeds):
                print(f"[odm] {name} W4A4 {label} seed {seed}", flush=True)
                slug = ("e" if not change else "e_" + "_".join(change)) + (f"_s{seed}" if seed else "")
                cfg = make_config(settings, "sr", dict(_qat_base(spec, quant, 4, steps, patch), seed=seed))
                per_seed.append(run_training(cfg, settings.out / "odm" / name / "w4" / slug, init=deploy)["eval"][
                    "INT8 fake-quant"])
            choices[label] = {m: float(np.mean([r[m] for r in per_seed])) for m in ("psnr_rgb", "psnr_y", "ssim_y")}
            choices[label]["psnr_rgb_per_seed"] = [r["psnr_rgb"] for r in per_seed]
        if choices:
            result.setdefault("choices_W4A4", {})[name] = choices
            result.setdefault("choices_commands", {})[name] = " ".join(
                [f"python benchmarks/{Path(sys.argv[0]).name}"] + sys.argv[1:])
        merge_entry(settings.out / "odm_ablation.json", result, name, MODELS,
                    sections=("models", "choices_W4A4", "choices_commands"))
    return result


def paper_order_reproduced(rows: dict) -> dict:
    """Does our ranking agree with the paper's claims? (c) > (a), (e) > (d), (e) best, (b) > (a)."""
    p = {k: v["psnr_rgb"] for k, v in rows.items()}
    a, b, c, d, e = (p[k] for k in VARIANTS)
    return {"WCC helps: (c) > (a)": c > a, "cooperative beats naive: (e) > (d)": e > d,
            "cooperative MR helps: (b) > (a)": b > a, "ODM best: (e) = max": e >= max(p.values()) - 1e-9}


if __name__ == "__main__":
    print(load_json(standalone(run).out / "odm_ablation.json"))
