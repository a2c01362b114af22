"""Bring your own model: FP32 vs INT8 PTQ vs INT8 QAT for user-style SR nets, through ``quantize_model``.

    python benchmarks/byom.py --train data/samples/train --eval data/samples/eval --out runs/byom

The three architectures of tests/fixtures/user_nets.py (EDSR-style with PyTorch PixelShuffle,
Real-ESRGAN-compact-style with PReLU and a nearest residual, SPAN-style with SiLU and sigmoid gates),
x2, widened to 16-32 channels. Each is trained here in FP32 for a short run (L1, bicubic LR crops of
the training photos: short runs, so the PSNRs are far from the published nets'), saved as a plain
state_dict, then quantized as a user would: ``quantir quantize``'s PTQ (percentile calibration on the
training photos; MSE ranges, the default) and QAT by distillation from the FP32 model. PSNR (RGB, no shave; Y with shave = scale)
on the evaluation photos for FP32, PTQ TFLite and QAT TFLite, parity with fake-quant, and latency at
360x640 (TFLite, 2 threads). Prints a markdown table and writes byom.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/fixtures holds the architectures

from quantir.data.datasets import image_files  # noqa: E402
from quantir.data.io import read_image  # noqa: E402
from quantir.data.resize import downscale, mod_crop  # noqa: E402
from quantir.data.task import ModelInfo  # noqa: E402
from quantir.evaluate.bench import benchmark  # noqa: E402
from quantir.evaluate.evaluate import evaluate  # noqa: E402
from quantir.export.runtime import load_runtime  # noqa: E402
from quantir.models.apply import run_uint8  # noqa: E402
from quantir.models.protocol import WrappedModel  # noqa: E402
from quantir.train.quantize_run import QuantizeConfig, quantize_model  # noqa: E402
from tests.fixtures import user_nets  # noqa: E402

NETS = {
    "edsr_style": (lambda: user_nets.EDSRStyle(feats=32, blocks=4), 255.0),
    "compact_style": (lambda: user_nets.CompactStyle(feats=32, convs=6), 1.0),
    "span_style": (lambda: user_nets.SPANStyle(feats=24, blocks=3), 1.0),
}
SCALE = 2


def train_fp32(net, pixel_max, photos, steps, batch=16, patch=32, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [mod_crop(read_image(p), SCALE) for p in photos]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hp = patch * SCALE
    net.train()
    for _ in range(steps):
        hr = []
        for _ in range(batch):
            img = imgs[rng.integers(len(imgs))]
            y, x = rng.integers(0, img.shape[0] - hp + 1), rng.integers(0, img.shape[1] - hp + 1)
            hr.append(img[y:y + hp, x:x + hp])
        lr = [downscale(h, SCALE) for h in hr]
        to = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() * (pixel_max / 255.0)  # noqa: E731
        loss = (net(to(lr)) - to(hr)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


# row -> (mode, QAT?, weight rounding, weight start): PTQ with each weight-rounding rule and with the
# automatic choice between them, QAT with sum-preserving rounding (BENCHMARKS.md "Sum-preserving
# weight rounding"), and PTQ (auto rounding) from the learned weight starts of quant/weight_start.py;
# each rule is named, whatever quantize's default.
VARIANTS = {
    "ptq": ("ptq", False, "sum_preserving", ()),
    "ptq_nearest": ("ptq", False, "nearest", ()),
    "ptq_auto": ("ptq", False, "auto", ()),
    "qat": ("qat", True, "sum_preserving", ()),
    "ptq_adaround": ("ptq", False, "auto", ("adaround",)),
    "ptq_bias_correction": ("ptq", False, "auto", ("bias_correction",)),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="data/samples/train")
    ap.add_argument("--eval", default="data/samples/eval")
    ap.add_argument("--stress", default="data/samples/stress", help="smooth photos, scored too when the folder exists")
    ap.add_argument("--out", default="runs/byom")
    ap.add_argument("--fp32-steps", type=int, default=1500)
    ap.add_argument("--qat-steps", type=int, default=300)
    ap.add_argument("--nets", nargs="+", default=list(NETS))
    ap.add_argument("--reuse-fp32", action="store_true",
                    help="load OUT/<net>/fp32.pt where an earlier run saved it instead of training again")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (TFLite timings always use 2)")
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS),
                    help="run only these rows, keep the others of OUT/byom.json (needs --reuse-fp32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    photos = image_files(args.train)
    rows = []
    for name in args.nets:
        make, pixel_max = NETS[name]
        torch.manual_seed(0)
        t0 = time.time()
        if args.reuse_fp32 and (out / name / "fp32.pt").is_file():
            net, fp32_min = make_loaded(make, out / name / "fp32.pt"), None
        else:
            net = train_fp32(make(), pixel_max, photos, args.fp32_steps)
            fp32_min = (time.time() - t0) / 60
            (out / name).mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), out / name / "fp32.pt")
        info = ModelInfo(task="sr", scale=SCALE, pixel_max=pixel_max)
        pairs = info.eval_pairs(args.eval)
        stress = info.eval_pairs(args.stress) if Path(args.stress).is_dir() else None
        wrapped = WrappedModel(net, info)
        row = {"model": name, "params": sum(p.numel() for p in net.parameters()), "fp32_steps": args.fp32_steps,
               "qat_steps": args.qat_steps, "fp32_train_min": fp32_min,
               "bicubic": evaluate(info.baseline(), pairs, border=SCALE)["psnr_rgb"],
               "fp32": evaluate(lambda im: run_uint8(wrapped, im), pairs, border=SCALE)["psnr_rgb"]}
        if stress is not None:
            row["fp32_stress"] = evaluate(lambda im: run_uint8(wrapped, im), stress, border=SCALE)["psnr_rgb"]
        for key in args.only or VARIANTS:
            mode, qat, rounding, start = VARIANTS[key]
            t0 = time.time()
            cfg = QuantizeConfig(model=name, calib=args.train, mode=mode, steps=args.qat_steps if qat else 0, batch=4,
                                 crop=32, lr=2e-5, parity_limit=4, weight_rounding=rounding,
                                 adaround="adaround" in start, bias_correction="bias_correction" in start)
            res = quantize_model(make_loaded(make, out / name / "fp32.pt"), info, cfg, out / name / key)
            row[f"{key}_min"] = (time.time() - t0) / 60
            rt = load_runtime(out / name / key / "model_int8.tflite", threads=2)
            row[f"{key}_tflite"] = evaluate(rt.run, pairs, border=SCALE)["psnr_rgb"]
            if stress is not None:
                row[f"{key}_stress"] = evaluate(rt.run, stress, border=SCALE)["psnr_rgb"]
            row[f"{key}_max_lsb"] = res["parity"].backends["tflite"].max_lsb
            if res["weight_rounding"]:  # auto: the rule chosen and its held-out scores
                row[f"{key}_rounding"] = res["weight_rounding"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.only:  # merge into the full table of an earlier run, whose latencies stay (no QAT artifact changed)
        before = json.loads((out / "byom.json").read_text())
        earlier = {r["model"]: r for r in before["rows"]}
        rows = [{**earlier.get(r["model"], {}), **r} for r in rows]
        builtin_ms = before["builtin_x3_ms_360x640"]
    else:  # latency in one interleaved run, next to the built-in x3 model (a reference on this machine)
        from quantir.infer import builtin_model

        files = [str(out / r["model"] / "qat" / "model_int8.tflite") for r in rows] + [str(builtin_model("sr"))]
        lat = benchmark(files, hw=(360, 640), threads=2, runs=10)
        for r, t in zip(rows, lat):
            r["ms_360x640"] = t["median_ms"]
        builtin_ms = lat[-1]["median_ms"]
    (out / "byom.json").write_text(json.dumps({"rows": rows, "builtin_x3_ms_360x640": builtin_ms}, indent=2) + "\n")
    print("| model | params | bicubic | FP32 | INT8 PTQ, nearest rounding (TFLite) | INT8 PTQ, sum-preserving (TFLite) "
          "| INT8 QAT, sum-preserving (TFLite) | max LSB vs fake-quant (PTQ nearest/PTQ/QAT) | ms at 360x640 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['bicubic']:.3f} | {r['fp32']:.3f} "
              f"| {r['ptq_nearest_tflite']:.3f} | {r['ptq_tflite']:.3f} | {r['qat_tflite']:.3f} "
              f"| {r['ptq_nearest_max_lsb']}/{r['ptq_max_lsb']}/{r['qat_max_lsb']} | {r['ms_360x640']:.1f} |")
    print(f"(built-in x3 model in the same timing run: {builtin_ms:.1f} ms)")
    if all("fp32_stress" in r for r in rows):
        print(f"\nStress photos ({args.stress}), INT8 TFLite - FP32 (PSNR-RGB):\n\n"
              "| model | FP32 | PTQ, nearest rounding | PTQ, sum-preserving | PTQ, auto (chosen) | QAT, sum-preserving |\n"
              "|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['fp32_stress']:.3f} | " + " | ".join(
                f"{r[k + '_stress'] - r['fp32_stress']:+.3f}" for k in ("ptq_nearest", "ptq")) +
                f" | {r['ptq_auto_stress'] - r['fp32_stress']:+.3f} ({r['ptq_auto_rounding']['chosen']})"
                f" | {r['qat_stress'] - r['fp32_stress']:+.3f} |")
    if all("ptq_adaround_tflite" in r and "ptq_bias_correction_tflite" in r for r in rows):
        print("\nPTQ (auto rounding) from a learned weight start, INT8 TFLite - FP32 (PSNR-RGB), eval / stress:\n\n"
              "| model | PTQ, auto | + AdaRound | + bias correction | max LSB |\n|---|---:|---:|---:|---:|")
        for r in rows:
            cells = [f"{r[k + '_tflite'] - r['fp32']:+.3f} / {r[k + '_stress'] - r['fp32_stress']:+.3f}"
                     for k in ("ptq_auto", "ptq_adaround", "ptq_bias_correction")]
            print(f"| {r['model']} | " + " | ".join(cells) +
                  f" | {r['ptq_adaround_max_lsb']}/{r['ptq_bias_correction_max_lsb']} |")
    return 0


def make_loaded(make, weights: Path):
    from quantir.models.external import load_weights

    return load_weights(make(), weights)


if __name__ == "__main__":
    sys.exit(main())
