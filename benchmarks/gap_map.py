"""Where on the photo an INT8 model loses to its FP32 model: border, clipped, smooth or textured pixels.

issue 15's gap (INT8 - FP32 PSNR on the stress photos) is a mean over photos of
10 log10(MSE_fp32 / MSE_int8). Per photo the extra squared error, sum(e_int8^2 - e_fp32^2), adds up
over pixels, so it splits exactly over disjoint regions (HR pixels):

- *border*: within ``--margin`` px of the image edge (where padding, not quantization, may differ);
- *clipped*: elsewhere, the target or either output at 0 or 255 in some channel;
- *smooth*: elsewhere, the target's local gradient (mean over channels of the largest absolute
  difference to the 4 neighbours, averaged over a 5x5 window) below ``--smooth`` levels;
- *textured*: the rest.

It also splits the extra error into the outputs' difference d = int8 - fp32 itself (mean of d^2)
and its correlation with the FP32 error (2 mean(e_fp32 d)), reports d's mean per channel (a DC
offset a bias could remove) and how often d is 0, +-1, +-2 or larger. The worst photos get a
figure: |d| and the extra error map (no photo pixels, so it can be committed).

    python benchmarks/gap_map.py --fp32 runs/builtin_sr/checkpoints/deploy_fp32.safetensors \
        --int8 src/quantir/assets/sr_x3/model_int8.tflite --data data/samples/stress \
        --out runs/gap_map_builtin
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from quantir.data.datasets import sr_pairs
from quantir.data.metrics import _filter, psnr
from quantir.errors import QuantirError
from quantir.export.runtime import load_runtime
from quantir.models.apply import run_uint8
from quantir.quant import checkpoint

REGIONS = ("border", "clipped", "smooth", "textured")


def local_gradient(img: np.ndarray, window: int = 5) -> np.ndarray:
    """Mean over channels of the largest absolute difference to the 4 neighbours, box-averaged."""
    f = img.astype(np.float32)
    g = np.zeros(f.shape[:2], np.float32)
    for axis in (0, 1):
        d = np.abs(np.diff(f, axis=axis)).mean(axis=2)
        pad = [(0, 0), (0, 0)]
        pad[axis] = (1, 0)
        g = np.maximum(g, np.pad(d, pad))
        pad[axis] = (0, 1)
        g = np.maximum(g, np.pad(d, pad))
    return _filter(g, np.full(window, 1.0 / window, np.float32))  # the SSIM's separable filter, a box kernel


def regions(target: np.ndarray, outs: list[np.ndarray], margin: int, smooth: float) -> dict[str, np.ndarray]:
    h, w = target.shape[:2]
    border = np.ones((h, w), bool)
    border[margin:h - margin, margin:w - margin] = False
    clipped = np.zeros((h, w), bool)
    for im in [target, *outs]:
        clipped |= ((im == 0) | (im == 255)).any(axis=2)
    clipped &= ~border
    flat = (local_gradient(target) < smooth) & ~border & ~clipped
    return {"border": border, "clipped": clipped, "smooth": flat, "textured": ~(border | clipped | flat)}


def photo_gap(target: np.ndarray, fp32: np.ndarray, int8: np.ndarray, margin: int, smooth: float) -> dict:
    t, f, q = (x.astype(np.float64) for x in (target, fp32, int8))
    ef, d = f - t, q - f
    extra = ((q - t) ** 2 - ef ** 2).sum(axis=2)  # per pixel, summed over channels
    masks = regions(target, [fp32, int8], margin, smooth)
    n = extra.size * 3
    total = extra.sum()
    adiff = np.abs(d)
    p_fp32, p_int8 = psnr(fp32, target), psnr(int8, target)
    return {
        "psnr_fp32": p_fp32, "psnr_int8": p_int8, "gap_db": p_int8 - p_fp32,
        "mse_fp32": float((ef ** 2).mean()), "extra_mse": float(total / n),
        "diff_power": float((d ** 2).mean()), "correlation_term": float(2 * (ef * d).mean()),
        "diff_mean_rgb": [float(v) for v in d.reshape(-1, 3).mean(axis=0)],
        "diff_share": {"0": float((adiff == 0).mean()), "1": float((adiff == 1).mean()),
                       "2": float((adiff == 2).mean()), ">2": float((adiff > 2).mean())},
        "regions": {r: {"pixels": float(m.mean()),
                        "extra_share": float(extra[m].sum() / total) if total else 0.0}
                    for r, m in masks.items()},
        "_maps": (np.abs(d).max(axis=2), extra),
    }


def figure(rows: list[tuple[str, dict]], path: Path) -> None:
    """|d| and the extra error map of each photo (no photo pixels: the figure may be committed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.4 * len(rows)), squeeze=False)
    for ax_row, (name, res) in zip(axes, rows):
        adiff, extra = res["_maps"]
        im = ax_row[0].imshow(adiff, cmap="magma", vmin=0, vmax=max(3, float(adiff.max())))
        ax_row[0].set_title(f"{name}: FP32 {res['psnr_fp32']:.2f} dB, INT8 {res['gap_db']:+.3f}\n"
                            "|INT8 - FP32|, levels (max over RGB)", fontsize=9)
        fig.colorbar(im, ax=ax_row[0], fraction=0.03)
        lim = float(np.percentile(np.abs(extra), 99.5)) or 1.0
        im = ax_row[1].imshow(extra, cmap="coolwarm", vmin=-lim, vmax=lim)
        ax_row[1].set_title("extra squared error of INT8 (red: INT8 worse)", fontsize=9)
        fig.colorbar(im, ax=ax_row[1], fraction=0.03)
        for ax in ax_row:
            ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    plt.close(fig)
    # per-pixel noise maps make a large true-colour PNG (0.6 MB); 128 colours keep it readable at a third
    Image.open(buf).convert("RGB").quantize(colors=128).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp32", required=True, help="fused FP32 checkpoint (the reference)")
    ap.add_argument("--int8", required=True, help="the INT8 artifact (.tflite or .onnx)")
    ap.add_argument("--data", required=True, help="folder of HR photos (LR made as in eval)")
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--margin", type=int, default=30, help="HR px of the border region")
    ap.add_argument("--smooth", type=float, default=2.0, help="local gradient (levels) below which a pixel is smooth")
    ap.add_argument("--worst", type=int, default=3, help="photos in the figure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:  # bad inputs end in one line, before the output folder exists
        fp32 = checkpoint.build_float(checkpoint.load(checkpoint.resolve(a.fp32)))
        rt = load_runtime(Path(a.int8), threads=a.threads)
        pairs = sr_pairs(a.data, a.scale)
    except QuantirError as err:
        raise SystemExit(f"gap_map: {err}") from None
    fp32.clamp_output = True
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    keep = []
    print("| photo | FP32 dB | INT8 - FP32 | " + " | ".join(f"{r} px / extra" for r in REGIONS)
          + " | d mean RGB | d=0 / +-1 |")
    print("|---|---:|---:|" + "---:|" * len(REGIONS) + "---|---:|")
    for p in pairs:
        res = photo_gap(p.target, run_uint8(fp32, p.input), rt.run(p.input), a.margin, a.smooth)
        name = Path(p.name).stem
        keep.append((name, res))
        reg = " | ".join(f"{res['regions'][r]['pixels']:.0%} / {res['regions'][r]['extra_share']:+.0%}" for r in REGIONS)
        dm = ", ".join(f"{v:+.3f}" for v in res["diff_mean_rgb"])
        print(f"| {name} | {res['psnr_fp32']:.2f} | {res['gap_db']:+.3f} | {reg} | {dm} | "
              f"{res['diff_share']['0']:.0%} / {res['diff_share']['1']:.0%} |", flush=True)
    results = {name: {k: v for k, v in res.items() if not k.startswith("_")} for name, res in keep}
    gaps = [r["gap_db"] for r in results.values()]
    print(f"\nmean INT8 - FP32 over {len(gaps)} photos: {np.mean(gaps):+.3f} dB")
    summary = {"fp32": a.fp32, "int8": a.int8, "data": a.data, "margin": a.margin, "smooth": a.smooth,
               "mean_gap_db": float(np.mean(gaps)), "photos": results}
    (out / "gap_map.json").write_text(json.dumps(summary, indent=2) + "\n")
    worst = sorted(keep, key=lambda r: r[1]["gap_db"])[:a.worst]
    figure(worst, out / "gap_map_worst.png")
    print(f"{out / 'gap_map.json'}\n{out / 'gap_map_worst.png'}")


if __name__ == "__main__":
    main()
