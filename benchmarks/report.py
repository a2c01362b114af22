"""Write BENCHMARKS.md and its plots from the JSON results of the benchmark scripts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from common import ROOT, git_rev, load_enhance_table, load_json, machine
from odm_ablation import paper_order_reproduced

QAT_TARGET_DB = 0.05


def _f(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


PTQ_ROWS = ("PTQ", "onnx")  # row labels of post-training methods (ours and onnxruntime's)


def _best(rows: dict, prefixes) -> tuple[float, str]:
    """(best dPSNR vs FP32, its row label) among rows whose label starts with one of ``prefixes``."""
    return max((v["delta_rgb"], k) for k, v in rows.items() if k.startswith(prefixes))


def sr_tables(sr: dict) -> list[str]:
    lines = []
    for name, m in sr["models"].items():
        rows = m["rows"]
        lines += [f"### {name}", "", "| method | measured on | PSNR-RGB | PSNR-Y | SSIM-Y | dPSNR-RGB vs FP32 |",
                  "|---|---|---:|---:|---:|---:|"]
        for label, r in rows.items():
            where = {"bicubic": "-", "FP32": "PyTorch FP32 (fused)",
                     "onnxruntime quantize_static": "onnxruntime INT8 QDQ"}.get(label, "INT8 TFLite artifact")
            lines.append(f"| {label} | {where} | {_f(r['psnr_rgb'])} | {_f(r['psnr_y'])} | {_f(r['ssim_y'], 4)} | "
                         f"{r['delta_rgb']:+.3f} |")
        met = [k for k, v in rows.items() if k.startswith("QAT") and v["delta_rgb"] >= -QAT_TARGET_DB]
        (best_ptq, ptq_label), (best_qat, _) = _best(rows, PTQ_ROWS), _best(rows, ("QAT",))
        lines += ["", f"Target (QAT artifact within {QAT_TARGET_DB} dB of FP32): "
                  + (f"met by {', '.join(met)}." if met else "**missed** by every QAT variant")
                  + f" Best QAT: {best_qat:+.3f} dB; best PTQ: {best_ptq:+.3f} dB ({ptq_label}).", ""]
    return lines


def odm_table(odm: dict) -> list[str]:
    lines = []
    paper = odm["paper_edsr_w2a2_set5"]
    for name, by_bits in odm["models"].items():
        for bits, rows in by_bits.items():
            some = next(iter(rows.values()))
            lines += [f"### {name}, {bits} (FP32 {some['fp32_psnr_rgb']:.3f} dB, bicubic "
                      f"{some['bicubic_psnr_rgb']:.3f} dB)", "",
                      "| variant | PSNR-RGB | PSNR-Y | SSIM-Y | paper, EDSR x4 W2A2, Set5 |", "|---|---:|---:|---:|---:|"]
            for label, r in rows.items():
                lines.append(f"| {label} | {_f(r['psnr_rgb'])} | {_f(r['psnr_y'])} | {_f(r['ssim_y'], 4)} | "
                             f"{paper[label]:.2f} |")
            checks = paper_order_reproduced(rows)
            lines += ["", "Paper's ordering reproduced? " + "; ".join(f"{k}: {'yes' if v else 'no'}"
                                                                      for k, v in checks.items()), ""]
    choices = odm.get("choices_W4A4", {})
    for name, rows in ((n, choices[n]) for n in odm["models"] if n in choices):  # the tables' network order
        seeds = len(next(iter(rows.values())).get("psnr_rgb_per_seed", [0]))
        lines += [f"### ODM choices left open by the paper: {name}, W4A4 (row (e), one setting changed)", "",
                  f"Command: `{odm.get('choices_commands', {}).get(name, 'benchmarks/odm_ablation.py --choices')}`; "
                  f"mean over {seeds} QAT seed(s).", "",
                  "| variant | PSNR-RGB | PSNR-Y | SSIM-Y | PSNR-RGB per seed |", "|---|---:|---:|---:|---|"]
        lines += [f"| {label} | {_f(r['psnr_rgb'])} | {_f(r['psnr_y'])} | {_f(r['ssim_y'], 4)} | "
                  + ", ".join(f"{v:.3f}" for v in r.get("psnr_rgb_per_seed", [])) + " |"
                  for label, r in rows.items()] + [""]
    return lines


def enhance_table(enh: dict) -> list[str]:
    lines = ["| variant | input | FP32 | PTQ TFLite | QAT fake-quant | QAT TFLite | TFLite all int8 | "
             "max LSB vs fake-quant | tanh skip levels | ms at 720x1280 |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    errors, gaps = [], []
    for label, r in enh["variants"].items():
        par = r.get("parity") or {}
        tfl = r.get("INT8 TFLite (QAT)") or {}
        ptq = r.get("INT8 TFLite (PTQ percentile)") or {}
        counts = par.get("float_op_counts") or {}
        non = [f"{op} x{counts[op]}" if op in counts else op for op in par.get("non_int8_ops") or []]
        int8 = "export refused (1)" if r.get("export_error") else \
            ("yes" if par.get("all_int8") else "no: " + ", ".join(non) + " in float")
        if r.get("export_error") and not errors:
            errors.append(f"(1) litert-torch refused the conversion: `{r['export_error'][:300]}`")
        ms = (r.get("latency") or {}).get("median_ms")
        lines.append(f"| {label} | {_f(r['input']['psnr_rgb'])} | {_f(r['FP32']['psnr_rgb'])} | "
                     f"{_f(ptq.get('psnr_rgb'))} | {_f(r['INT8 fake-quant (QAT)']['psnr_rgb'])} | "
                     f"{_f(tfl.get('psnr_rgb'))} | {int8} | {par.get('max_lsb', '-')} | {r['tanh_concat_levels']} | "
                     f"{_f(ms, 1)} |")
        if tfl.get("psnr_rgb") is not None and ptq.get("psnr_rgb") is not None and (
                label.startswith("paper") or "qatie_unet_int8" in label):
            gaps.append(f"- {label}: QAT - PTQ on the artifact {tfl['psnr_rgb'] - ptq['psnr_rgb']:+.3f} dB; "
                        f"FP32 -> INT8 (QAT TFLite) {tfl['psnr_rgb'] - r['FP32']['psnr_rgb']:+.3f} dB")
    lines += [""] + errors
    p = enh["paper_dped"]
    lines += ["", f"Paper (DPED, c=32): FP32 {p['FP32']} dB -> INT8 QAT {p['INT8 QAT']} dB (-{p['FP32'] - p['INT8 QAT']:.3f});"
              f" INT8 PTQ {p['INT8 PTQ']} dB (QAT - PTQ +{p['INT8 QAT'] - p['INT8 PTQ']:.3f}). The same two numbers here:", ""]
    lines += gaps + [""]
    return lines


def speed_table(speed: dict) -> list[str]:
    lines = ["| network | runtime | median ms | min ms | GMAC | GMAC/s | PSNR-RGB | MAI score |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in speed["inference"]:
        lines.append(f"| {r['network']} | {r['label']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{_f(r.get('gmac'), 2)} | {_f(r.get('gmac_per_s'), 1)} | {_f(r['psnr_db'])} | "
                     f"{r['mai_score']:.3g} |")
    t = speed["training"]
    lines += ["", f"Training throughput ({t['setting']}): FP32 multi-branch {t['fp32_multibranch_ms']:.0f} ms/step, "
              f"QAT (fused graph) {t['qat_ms']:.0f} ms/step, QAT + ODM {t['qat_odm_ms']:.0f} ms/step; "
              f"QAT/FP32 = {t['qat_over_fp32']:.2f}x, ODM/QAT = {t['qat_odm_over_qat']:.2f}x.", ""]
    return lines


def parity_table(sr: dict, enh: dict | None) -> list[str]:
    lines = ["| network | artifact | backend | max LSB | values off by 1 | PSNR vs fake-quant | all int8 |",
             "|---|---|---|---:|---:|---:|---|"]
    for name, m in sr["models"].items():
        for label, par in m["parity"].items():
            for backend in ("tflite", "onnx"):
                r = par.get(backend)
                if r:
                    lines.append(f"| {name} | {label} | {backend} | {r['max_lsb']} | {100 * r['frac_off_by_one']:.3f}% | "
                                 f"{r['psnr_vs_fakequant_db']:.2f} dB | {'yes' if r['all_int8'] else 'no'} |")
    for label, r in (enh or {}).get("variants", {}).items():
        par = r.get("parity")
        if par:
            lines.append(f"| qatie (c=16) | {label} | tflite | {par['max_lsb']} | {100 * par['frac_off_by_one']:.3f}% | "
                         f"{par['psnr_vs_fakequant_db']:.2f} dB | {'yes' if par['all_int8'] else 'no'} |")
    lines += ["", "Integer-exact convolutions in the fake-quant model (quant/exact.py), same weights and scales:", "",
              "| network | fake-quant convs | max LSB | values off by 1 | PSNR vs fake-quant |", "|---|---|---:|---:|---:|"]
    for name, m in sr["models"].items():
        for label, r in m["exact_conv"].items():
            lines.append(f"| {name} | {label} | {r['max_lsb']} | {100 * r['frac_off_by_one']:.3f}% | "
                         f"{r['psnr_vs_fakequant_db']:.2f} dB |")
    return lines + [""]


def plots(sr: dict, speed: dict | None, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, axes = plt.subplots(1, len(sr["models"]), figsize=(6 * len(sr["models"]), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], sr["models"].items()):
        labels = [k for k in m["rows"] if k not in ("bicubic", "FP32")]
        vals = [m["rows"][k]["delta_rgb"] for k in labels]
        colors = ["tab:red" if k.startswith(PTQ_ROWS) else "tab:green" for k in labels]
        ax.barh(labels, vals, color=colors)
        ax.axvline(-QAT_TARGET_DB, color="k", ls="--", lw=0.8, label=f"-{QAT_TARGET_DB} dB target")
        ax.set(title=f"{name}: INT8 artifact vs FP32", xlabel="dPSNR-RGB (dB)")
        ax.invert_yaxis()
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "ptq_vs_qat.png", dpi=110)
    plt.close(fig)
    made.append("ptq_vs_qat.png")
    if speed:
        fig, ax = plt.subplots(figsize=(11, 5))
        nets = sorted({r["network"] for r in speed["inference"]})
        runtimes = sorted({r["label"] for r in speed["inference"]})
        cmap = plt.get_cmap("tab10")
        for r in speed["inference"]:  # marker = network, colour = runtime
            ax.scatter(r["median_ms"], r["psnr_db"], marker="os^D"[nets.index(r["network"]) % 4], s=40,
                       color=cmap(runtimes.index(r["label"]) % 10), label=f"{r['network']}: {r['label']}")
        ys = [r["psnr_db"] for r in speed["inference"]]
        xs = [r["median_ms"] for r in speed["inference"]]
        lo, hi = min(xs) * 0.7, max(xs) * 1.4
        ref = max(speed["inference"], key=lambda r: r["mai_score"])
        for k in (0.5, 1.0, 2.0):  # iso-lines: 2^(2 PSNR) / (C t) = const  ->  PSNR = log2(const C t) / 2
            score = ref["mai_score"] * k
            t = [lo * (hi / lo) ** (i / 50) for i in range(51)]
            ax.plot(t, [math.log2(score * 1.16e16 * v) / 2 for v in t], "k:", lw=0.7)
            ax.text(t[-1], math.log2(score * 1.16e16 * t[-1]) / 2, f" score {score:.2g}", fontsize=7, clip_on=True)
        ax.set(xscale="log", xlabel="median latency at 360x640, 2 threads (ms)", ylabel="PSNR-RGB (dB)",
               title="Quality vs latency with MAI 2026 score iso-lines")
        ax.set_ylim(min(ys) - 0.3, max(ys) + 0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "psnr_vs_latency.png", dpi=110)
        plt.close(fig)
        made.append("psnr_vs_latency.png")
    return made


def misses(sr: dict | None, odm: dict | None, enh: dict | None, quick: bool) -> list[str]:
    """Every target this run missed, in plain words (computed from the tables below)."""
    out = []
    for name, m in (sr or {}).get("models", {}).items():
        for label, r in m["rows"].items():
            if label.startswith("QAT") and r["delta_rgb"] < -QAT_TARGET_DB:
                out.append(f"{name} {label}: {r['delta_rgb']:+.3f} dB vs FP32 (target -{QAT_TARGET_DB} dB). "
                           "Weight clipping (WCC) removes real weight range at 8 bits; it is a low-bit tool.")
        best_ptq, best_qat = _best(m["rows"], PTQ_ROWS)[0], _best(m["rows"], ("QAT",))[0]
        if best_ptq > best_qat:
            out.append(f"{name}: the best PTQ ({best_ptq:+.3f} dB) beats the best QAT ({best_qat:+.3f} dB); this "
                       "net loses almost nothing to 8-bit PTQ and the short QAT run did not recover anything on top.")
        for label, par in m["parity"].items():
            for backend, r in par.items():
                if isinstance(r, dict) and r.get("max_lsb", 0) > 1:
                    out.append(f"{name} {label} {backend}: {r['max_lsb']} LSB from fake-quant (target 1); see "
                               "DEVELOPERS.md, section 'ONNX: making onnxruntime compute the integer kernels' "
                               "numbers'.")
    for name, by_bits in (odm or {}).get("models", {}).items():
        for bits, rows in by_bits.items():
            failed = [k for k, v in paper_order_reproduced(rows).items() if not v]
            if failed:
                out.append(f"ODM ordering, {name} {bits}: not reproduced for " + "; ".join(failed) + ".")
    for label, r in (enh or {}).get("variants", {}).items():
        if r.get("export_error"):
            out.append(f"Enhancement '{label}': no INT8 TFLite (litert-torch refuses its concat of tanh branches "
                       "with wide features, footnote (1)).")
        elif r.get("parity") and r["parity"]["max_lsb"] > 1:
            out.append(f"Enhancement '{label}': TFLite {r['parity']['max_lsb']} LSB from fake-quant "
                       f"({100 * r['parity']['frac_off']:.1f} % of values differ; target 1).")
    if quick:
        out.append("Quick mode: 150-step QAT (120 in the ODM ablation; its open-choice rows only with "
                   "--choices) after 700-1500-step FP32 trainings on 29 photos; full mode (`make bench`, a few "
                   "hours) has not been run for this file.")
    return out


def write(bench_dir: Path, target: Path, command: str) -> None:
    sr = load_json(bench_dir / "sr_quant.json")
    odm = load_json(bench_dir / "odm_ablation.json")
    enh = load_json(bench_dir / "enhance.json")
    speed = load_json(bench_dir / "speed.json")
    builtin = load_json(ROOT / "src" / "quantir" / "assets" / "builtin_results.json")
    commands = load_json(bench_dir / "commands.json") or {}
    cmd = lambda part, script: commands.get(part, f"python benchmarks/{script}")  # noqa: E731
    m = (sr or {}).get("machine") or machine()
    plot_dir = target.parent / "docs" / "benchmarks"  # the links below are relative to the document
    plot_dir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if (sr or {}).get("quick") else "full"
    lines = ["# quantir benchmarks", "",
             f"Generated by `{command}` ({mode} mode) on {m['date']}, git {git_rev()}; each table names the "
             "run_all command that produced it (finished runs in the output folder are reused when their config "
             "is unchanged, interrupted ones resumed). Trainings ran as parallel single-thread jobs on two workers (`--jobs 2`, the default); "
             "speed ran alone on the machine afterwards." + "".join(
                 f" Wall time of `{c}`: {s / 60:.1f} min." for c, s in commands.get("wall_s", {}).items()
                 if c == command),
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}. "
             "Latencies come from a shared machine: compare medians within one table, not across runs.",
             "Data: training photos = the sample `train` set (Debian wallpapers, 4 held out for validation); "
             "evaluation = the 16 sample `eval` photos (PyPI wheels), never used for training, validation or "
             "calibration. SR inputs are antialiased-bicubic x3 downscales. Pass `--div2k` / `--dped` to "
             "`benchmarks/run_all.py` to run the same tables on DIV2K / DPED.", ""]
    real = [f"{what}: {r['data']}" for what, r in (("SR tables", sr), ("enhancement table", enh))
            if r and r.get("data", "").startswith(("DIV2K", "DPED"))]
    if real:  # the sentence above describes the default; this run used the real datasets
        lines[-1:-1] = ["This run used " + "; ".join(real) + "."]
    missed = misses(sr, odm, enh, mode == "quick")
    if missed:
        lines += ["## What missed its target", ""] + [f"- {m}" for m in missed] + [""]
    if builtin:
        lines += ["## Built-in models (shipped INT8 TFLite)", "",
                  f"Command: `{builtin['command']}`", ""] + builtin["table"] + [""]
    if sr:
        lines += ["## 1. SR x3: PTQ vs QAT, measured on the exported artifacts", "",
                  f"Command: `{cmd('sr', 'sr_quant.py')}`.",
                  "PSNR-RGB without border shave (MAI), PSNR-Y/SSIM-Y with a 3-pixel shave.", ""] + sr_tables(sr)
    if odm:
        lines += ["## 2. ODM ablation at low bits (simulation)", "",
                  f"Command: `{cmd('odm', 'odm_ablation.py')}`. "
                  f"lambda_M = {odm['lambda_m']} on the paper's 0..255 pixel scale (applied as lambda_M / pixel_max to the 0..1 loss), "
                  "mismatch on detached q(X), per-layer cooperative similarity. "
                  "Fake-quant PSNR (no low-bit export exists). The paper column is EDSR x4 on Set5, for the "
                  "ordering only.", ""] + odm_table(odm)
    if enh:
        lines += ["## 3. Enhancement: QATIE paper net vs qatie_unet_int8 (synthetic phone degradation)", "",
                  f"Command: `{cmd('enhance', 'enhance.py')}`. c=16, PSNR-RGB "
                  "on the degraded evaluation photos (a DPED proxy).", ""] + enhance_table(enh)
    if speed:
        lines += [f"## 4. Speed at 360x640 input, {speed['threads']} threads", "",
                  f"Command: `{cmd('speed', 'speed.py')}`. MAI score = 2^(2 PSNR) / (1.16e16 ms) with the table-1 "
                  "INT8 TFLite PSNR (FP32 / ORT rows use their own PSNR).", ""] + speed_table(speed)
    if sr:
        lines += ["## 5. Parity: artifact vs fake-quant model", "",
                  "Measured on the evaluation photos (8-16 images); 1 LSB = one 8-bit output level.", ""]
        lines += parity_table(sr, enh)
        for p in plots(sr, speed, plot_dir):
            lines += [f"![{p}](docs/benchmarks/{p})", ""]
    # Measurements made by other scripts (each names its command) survive a regeneration of the tables.
    old = target.read_text() if target.is_file() else ""
    if KEPT_SECTION in old:
        lines += [old[old.index(KEPT_SECTION):].rstrip()]
    target.write_text("\n".join(lines) + "\n")
    print(f"wrote {target}")


KEPT_SECTION = "## Measured outside run_all.py"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-dir", default="bench-runs")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--command", default="make bench")
    ap.add_argument("--print", choices=["enhance"], help="print one table of --bench-dir instead of writing --out "
                    "(a run kept apart from the file's own tables, e.g. table 3 in full mode)")
    a = ap.parse_args()
    if a.print:
        print("\n".join(enhance_table(load_enhance_table(Path(a.bench_dir)))))
    else:
        write(Path(a.bench_dir), Path(a.out), a.command)
