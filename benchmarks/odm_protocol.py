"""The ODM lineage's protocol against "fully k-bit" QAT (issue 17): which layers stay off the grid.

From one FP32 deploy checkpoint, QAT at WkAk in up to three layouts: every layer at k bits (the
layout of BENCHMARKS.md table 2), head/tail/upsampler in float (PAMS/DAQ/DDTB/ODM's default) and
at 8 bits (their "fully quantized" mode), each with table 2's rows (a)-(e) and several seeds.
Fake-quant PSNR-RGB on the evaluation photos (mean +- std over seeds), Y-PSNR with shave = scale,
next to bicubic and FP32; a verdict per ordering of the paper (reproduced / within noise / not
reproduced: the mean difference against twice its standard error); the validation curves of
every run in one plot.

    python benchmarks/odm_protocol.py --models mobileone_sr abpn --bits 2 4 --layouts 8bit \
        --seeds 3 --steps 400 --out runs/odm_protocol

`--models` trains each net's FP32 model first (table 1's quick recipe, reused when present under
OUT/fp32/NAME); `--init CHECKPOINT` starts from a deploy checkpoint trained elsewhere instead.
`--fp32-continued` also trains the FP32 model on for as many steps, with the QAT runs' loop and no
quantizer (OUT/fp32_continued/sN): on a short FP32 run the QAT steps train the model on too, and a
row can end above its FP32 start; against this reference the last column is the quantization loss.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import torch

from common import BenchSettings, make_config, run_training
from odm_ablation import VARIANTS, _qat_base
from sr_quant import MODELS, fp32_config

from quantir.quant import checkpoint

# Table 1's two nets at x3, and the ODM lineage's own net at its paper scale (x4): the small variant
# that trains on 2 cores, and the full edsr_baseline (1.52 M parameters, 9.5x the small one), whose
# quick FP32 run is 1000 steps of 24-px patches (12.5 min on 2 cores, BENCHMARKS.md part 9).
NETS = dict(MODELS, edsr_baseline_small={"model": "edsr_baseline_small", "fp32_full": (3000, 48),
                                         "fp32_quick": (1500, 32), "stage2": False, "scale": 4},
            edsr_baseline={"model": "edsr_baseline", "fp32_full": (3000, 48), "fp32_quick": (1000, 24),
                           "stage2": False, "scale": 4})
# "float"/"8bit" quantize every tensor the int8 artifact would (adds and skips included);
# "conv-float"/"conv-8bit" quantize only conv inputs and weights, as the lineage's QConv2d does
# (papers.md 2.6: residual adds and skips stay float): its reported protocol.
LAYOUTS = {"full": ("fully k-bit", {}),
           "float": ("head/tail/upsampler float", {"keep": {"mode": "float"}}),
           "8bit": ("head/tail/upsampler 8-bit", {"keep": {"mode": "8bit"}}),
           "conv-float": ("paper: conv inputs only, head/tail/upsampler float",
                          {"keep": {"mode": "float"}, "act_scope": "conv_inputs"}),
           "conv-8bit": ("paper: conv inputs only, head/tail/upsampler 8-bit",
                         {"keep": {"mode": "8bit"}, "act_scope": "conv_inputs"}),
           # and the paper's activation-range start (papers.md 2.3: the 1st/99th percentiles)
           "paper-float": ("paper: conv inputs only, float head/tail/upsampler, p1-p99 ranges",
                           {"keep": {"mode": "float"}, "act_scope": "conv_inputs", "act_percentile": 99.0})}
ORDERINGS = {"WCC helps: (c) > (a)": ("c", "a"), "cooperative MR helps: (b) > (a)": ("b", "a"),
             "cooperative beats naive: (e) > (d)": ("e", "d"), "ODM beats baseline: (e) > (a)": ("e", "a")}


def verdict(x: list[float], y: list[float]) -> str:
    """'reproduced' when mean(x) - mean(y) exceeds twice its standard error, 'not reproduced' when
    it is below minus that, else 'within noise' (one seed: the sign alone, marked)."""
    d = float(np.mean(x) - np.mean(y))
    if len(x) < 2 or len(y) < 2:
        return ("reproduced" if d > 0 else "not reproduced") + " (1 seed, no error bar)"
    se = math.sqrt(np.var(x, ddof=1) / len(x) + np.var(y, ddof=1) / len(y))
    if d > 2 * se:
        return f"reproduced ({d:+.3f} dB, 2 SE {2 * se:.3f})"
    if d < -2 * se:
        return f"not reproduced ({d:+.3f} dB, 2 SE {2 * se:.3f})"
    return f"within noise ({d:+.3f} dB, 2 SE {2 * se:.3f})"


def val_curve(run_dir: Path, stage: str = "qat") -> tuple[list[int], list[float]]:
    """(step, validation PSNR) of one stage (the QAT stage by default) from the run's metrics.csv."""
    steps, psnr = [], []
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return steps, psnr
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get("stage") == stage and row.get("val_psnr"):
                steps.append(int(row["step"]))
                psnr.append(float(row["val_psnr"]))
    return steps, psnr


def last_quarter_gain(curve: tuple[list[int], list[float]]) -> float | None:
    """Validation PSNR at the last point minus at the last point at or before 3/4 of the steps: how
    much the curve still climbs at the end (the issue's "flattened"); None without two such points."""
    steps, psnr = curve
    if len(steps) < 2:
        return None
    cut = 0.75 * steps[-1]
    earlier = [p for s, p in zip(steps, psnr) if s <= cut]
    return psnr[-1] - earlier[-1] if earlier else None


def plot_curves(curves: dict, path: Path, references: dict | None = None) -> None:
    """One panel per "net | bits | layout" group, a line per run; ``references`` (net -> curves of
    the FP32 model trained on without a quantizer) are drawn dashed in every panel of that net."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({k.rsplit(" | ", 1)[0] for k in curves})
    cols = min(3, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, group in zip(axes.flat, groups):
        for key, (steps, psnr) in curves.items():
            if key.startswith(group + " | ") and steps:
                row = key.rsplit(" | ", 1)[1].rsplit(" s", 1)[0]  # one legend entry per row, not per seed
                ax.plot(steps, psnr, label=row, color=f"C{'abcde'.index(row[1])}", alpha=0.7)
        for steps, psnr in (references or {}).get(group.split(" | ")[0], []):
            ax.plot(steps, psnr, label="FP32 trained on, no quantizer", color="0.4", ls="--", alpha=0.8)
        ax.set_title(textwrap.fill(group, 55), fontsize=9)  # "net | bits | layout" is wider than a panel
        ax.set_xlabel("QAT step")
        ax.set_ylabel("validation PSNR (dB)")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fp32_continued(settings: BenchSettings, spec: dict, options: dict, init: str, root: Path, a,
                   every: int) -> dict:
    """The FP32 model trained on for ``a.steps`` steps with what the QAT runs change in it (L1 loss,
    peak lr ``a.lr`` on the same cosine, no weight average, 32-px patches, batch 16) but no quantizer:
    QAT's steps also train the model on, so on a short FP32 run a QAT row can end above its FP32
    start; this is the float model those steps would have made."""
    per_seed: dict = {"psnr_rgb": [], "psnr_y": [], "curves": []}
    for seed in range(a.first_seed, a.seeds):
        base = _qat_base(spec, {}, 8, a.steps, patch=32)
        # the QAT runs' own training settings, as the float stage (warm-up 0 as QAT's; stage1's default has one)
        loop = dict(base["qat"]["train"], lr=a.lr, warmup=0, val_every=every, ckpt_every=every)
        base.update(model_options=options, scale=int(options.get("scale", 3)), seed=seed, stage1=loop,
                    qat={"enabled": False})
        print(f"[odm-protocol] {spec['model']} FP32 trained on, seed {seed}", flush=True)
        run_dir = root / "fp32_continued" / f"s{seed}"
        ev = run_training(make_config(settings, "sr", base), run_dir, init=init)["eval"]
        for m in ("psnr_rgb", "psnr_y"):
            per_seed[m].append(ev["FP32 (fused)"][m])
        per_seed["curves"].append(val_curve(run_dir, "stage1"))
    return per_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", help="FP32 deploy checkpoint (quantir train's deploy_fp32); or --models")
    ap.add_argument("--models", nargs="+", choices=list(NETS), default=[],
                    help="train these nets' FP32 models here first (table 1's quick recipe)")
    ap.add_argument("--bits", type=int, nargs="+", default=[2])
    ap.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=["8bit"])
    ap.add_argument("--rows", nargs="*", choices=list("abcde"), default=list("abcde"),
                    help="table 2's rows (none: only the --fp32-continued reference)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="run seeds FIRST..SEEDS-1 only (the others in another process); a later call "
                         "without it reuses every finished run")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=1.0e-4, help="QAT peak learning rate (cosine to 1e-6)")
    ap.add_argument("--out", default="runs/odm_protocol")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="odm_protocol", help="name of the JSON and plot written under --out")
    ap.add_argument("--val-points", type=int, default=4,
                    help="validations per QAT run (evenly spaced; the curve and its last-quarter gain)")
    ap.add_argument("--fp32-continued", action="store_true",
                    help="also train the FP32 model on for --steps with the QAT runs' loop and no quantizer "
                         "(per seed): the reference that separates quantization loss from the extra training")
    a = ap.parse_args()
    if bool(a.init) == bool(a.models):
        ap.error("give exactly one of --init and --models")
    torch.set_num_threads(a.threads)
    settings = BenchSettings(Path(a.out), quick=True, threads=a.threads)
    inits = {"init": a.init} if a.init else {}
    for name in a.models:
        fp32_dir = settings.out / "fp32" / name
        print(f"[odm-protocol] FP32 {name}", flush=True)
        spec = NETS[name]
        cfg = dataclasses.replace(fp32_config(settings, spec), scale=spec.get("scale", 3))
        run_training(cfg, fp32_dir)  # reused when already trained
        inits[name] = str(fp32_dir / "checkpoints" / f"deploy_fp32{checkpoint.SUFFIX}")
    rows = {r[1]: r for r in VARIANTS if r[1] in a.rows}
    results, curves, refs, continued = {}, {}, {}, {}
    every = max(50, a.steps // a.val_points)  # validation and checkpoint interval, the same for every run
    for net, init in inits.items():
        record = checkpoint.load(init)
        spec = {"model": record["model_name"]}
        options = {k: v for k, v in record["model_cfg"].items() if k != "deploy"}
        root = settings.out if a.init else settings.out / net
        if a.fp32_continued:
            continued[spec["model"]] = fp32_continued(settings, spec, options, init, root, a, every)
        for bits in a.bits:
            for layout in a.layouts:
                name, keep = LAYOUTS[layout]
                group = f"{spec['model']} | W{bits}A{bits} | {name}"
                for letter, row in rows.items():
                    per_seed = []
                    for seed in range(a.first_seed, a.seeds):
                        base = _qat_base(spec, dict(VARIANTS[row], **keep), bits, a.steps, patch=32)
                        base["model_options"] = options
                        base["scale"] = int(options.get("scale", 3))
                        base["seed"] = seed
                        base["qat"]["train"]["lr"] = a.lr
                        base["qat"]["train"].update(val_every=every, ckpt_every=every)
                        run_dir = root / f"w{bits}" / layout / f"{letter}_s{seed}"
                        print(f"[odm-protocol] {group} {row} seed {seed}", flush=True)
                        ev = run_training(make_config(settings, "sr", base), run_dir, init=init)["eval"]
                        curve = val_curve(run_dir)
                        per_seed.append(dict(ev["INT8 fake-quant"], last_quarter_gain=last_quarter_gain(curve)))
                        refs[spec["model"]] = {"bicubic": ev["bicubic"], "FP32": ev["FP32 (fused)"]}
                        curves[f"{group} | {row} s{seed}"] = curve
                    if per_seed:  # --seeds 0: FP32 models only
                        results[f"{group} | {row}"] = {
                            m: [r[m] for r in per_seed] for m in ("psnr_rgb", "psnr_y", "last_quarter_gain")}
    verdicts = {}
    for key in {k.rsplit(" | ", 1)[0] for k in results}:
        got = {r[1]: results[f"{key} | {r}"]["psnr_rgb"] for r in rows.values() if f"{key} | {r}" in results}
        verdicts[key] = {o: verdict(got[x], got[y]) for o, (x, y) in ORDERINGS.items() if x in got and y in got}
    out = {"inits": inits, "steps": a.steps, "lr": a.lr, "seeds": a.seeds, "reference": refs, "results": results,
           "verdicts": verdicts, "fp32_continued": continued}
    (settings.out / f"{a.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    if curves:  # --seeds 0 (FP32 models only) has no QAT run to plot
        plot_curves(curves, settings.out / f"{a.tag}_curves.png", {k: v["curves"] for k, v in continued.items()})
    n = max(0, a.seeds - a.first_seed)
    print(f"\n{n} seed{'' if n == 1 else 's'} x {a.steps} QAT steps at lr {a.lr:g}; "
          "PSNR RGB / Y (shave = scale) on the evaluation photos")
    for net, ref in refs.items():
        bic, fp = ref["bicubic"], ref["FP32"]
        print(f"- {net}: bicubic {bic['psnr_rgb']:.3f} / {bic['psnr_y']:.3f} dB, "
              f"FP32 {fp['psnr_rgb']:.3f} / {fp['psnr_y']:.3f} dB")
    for net, r in continued.items():
        k = len(r["psnr_rgb"])
        print(f"- {net}: FP32 trained on for {a.steps} steps (QAT's loop, no quantizer), "
              f"{k} seed{'' if k == 1 else 's'}: {np.mean(r['psnr_rgb']):.3f} / {np.mean(r['psnr_y']):.3f} dB")
    extra = " minus FP32 trained on (RGB) |" if continued else ""
    print("\n| net | bits | layout | row | PSNR-RGB mean +- std | PSNR-Y mean +- std | minus bicubic (RGB) "
          f"| val. gain over the last quarter |{extra}\n|---|---|---|---|---:|---:|---:|---:|"
          + ("---:|" if continued else ""))
    for key, r in results.items():
        net, bits, layout, row = key.split(" | ")
        rgb, y = np.array(r["psnr_rgb"]), np.array(r["psnr_y"])
        sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        gains = [g for g in r["last_quarter_gain"] if g is not None]
        flat = f"{np.mean(gains):+.3f}" if gains else "-"
        # against the FP32 model trained on as many steps (mean over its seeds): the quantization loss
        versus = f" {rgb.mean() - np.mean(continued[net]['psnr_rgb']):+.3f} |" if net in continued else (
            " - |" if continued else "")
        print(f"| {net} | {bits} | {layout} | {row} | {rgb.mean():.3f} +- {sd(rgb):.3f} | {y.mean():.3f} +- "
              f"{sd(y):.3f} | {rgb.mean() - refs[net]['bicubic']['psnr_rgb']:+.3f} | {flat} |{versus}")
    for key, vs in sorted(verdicts.items()):
        for o, v in vs.items():
            print(f"- {key}: {o}: {v}")


if __name__ == "__main__":
    main()
