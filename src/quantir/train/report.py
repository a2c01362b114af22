"""End of a run: export, evaluate every form of the model on the evaluation photos, write the report."""

from __future__ import annotations

import csv
import json
import logging
from functools import partial
from pathlib import Path

from quantir.evaluate.evaluate import evaluate, format_table
from quantir.export.api import export_artifacts
from quantir.export.parity import ParityReport, format_parity
from quantir.export.runtime import load_runtime
from quantir.models.apply import run_uint8
from quantir.quant.api import convert
from quantir.train.config import TrainConfig
from quantir.train.loop import fault_point
from quantir.utils import atomic_write_text

log = logging.getLogger(__name__)


def finish_run(cfg: TrainConfig, run_dir: Path, deploy, qmodel, splits, metrics, state: dict,
               command: str | None, progress: bool) -> dict:
    info = cfg.task_info
    export_info, export_error = {}, None
    if cfg.export.enabled and qmodel is not None:
        log.info("exporting INT8 TFLite / ONNX artifacts and checking parity ...")
        fault_point("export", 0)  # crash tests: kill -9 here, then --resume must rebuild the same files
        images = []
        if splits.eval is not None:
            n = len(splits.eval) if cfg.export.parity_limit is None else min(cfg.export.parity_limit, len(splits.eval))
            images = [splits.eval[i].input for i in range(n)]
        try:
            export_info = export_artifacts(convert(qmodel), deploy, run_dir / "export", cfg.export,
                                           parity_images=images, config=cfg, command=command, reference=qmodel)
        except (ValueError, RuntimeError) as err:  # a converter refusal is a result worth reporting
            export_error = " ".join(str(err).split())[:400]
            log.warning("export failed: %s", export_error)
    candidates = []
    if (splits.eval is not None and len(splits.eval)) or splits.stress is not None:
        candidates = [(info.baseline_name, info.baseline()), ("FP32 (fused)", partial(run_uint8, deploy))]
        if qmodel is not None:
            candidates.append(("INT8 fake-quant", partial(run_uint8, qmodel)))
        for label, name in (("INT8 TFLite", "model_int8.tflite"), ("INT8 ONNX", "model_int8.onnx")):
            path = run_dir / "export" / name
            if path.is_file():
                candidates.append((label, load_runtime(path).run))
    rows = _evaluate_all(candidates, splits.eval, info.border, progress)
    stress = _evaluate_all(candidates, splits.stress, info.border, progress, " (stress)")
    parity = export_info.get("parity")
    results = {"eval": rows, "stress": stress, "parity": parity.to_dict() if parity else {},
               "timings_s": state.get("timings", {}), "export_error": export_error}
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    write_report(cfg, run_dir, results, command)
    for table in (rows, stress):
        if table:
            log.info("\n%s", format_table(table, baseline=next(iter(table))))
    if parity:
        log.info("\n%s", format_parity(parity))
    log.info("\nreport: %s", run_dir / "report.md")
    return results


def _evaluate_all(candidates, pairs, border: int, progress: bool, suffix: str = "") -> dict:
    """Every form of the model on ``pairs``: label -> mean metrics (no per-image lists)."""
    if pairs is None or not len(pairs):
        return {}
    return {label: {k: v for k, v in evaluate(fn, pairs, border, progress=progress, desc=label + suffix).items()
                    if k != "per_image"} for label, fn in candidates}


def int8_gaps(rows: dict) -> str:
    """'INT8 TFLite - FP32: -0.034 dB; INT8 TFLite - fake-quant: +0.0000 dB' from one table's rows."""
    parts = []
    if "INT8 TFLite" in rows and "FP32 (fused)" in rows:
        parts.append(f"INT8 TFLite - FP32: {rows['INT8 TFLite']['psnr_rgb'] - rows['FP32 (fused)']['psnr_rgb']:+.3f} dB")
    if "INT8 TFLite" in rows and "INT8 fake-quant" in rows:
        parts.append(f"INT8 TFLite - fake-quant: {rows['INT8 TFLite']['psnr_rgb'] - rows['INT8 fake-quant']['psnr_rgb']:+.4f} dB")
    return "; ".join(parts) + "." if parts else ""


def write_report(cfg: TrainConfig, run_dir: Path, results: dict, command: str | None) -> None:
    info = cfg.task_info
    task = info.title
    if not info.is_sr:
        task += " (DPED)" if cfg.data.layout == "dped" else " (synthetic degradation proxy)"
    lines = [f"# quantir run: {cfg.model}, {task}", ""]
    if command:
        lines += ["```", command, "```", ""]
    rows = results["eval"]
    if rows:
        first = next(iter(rows))
        n = next(iter(rows.values()))["n_images"]
        where = cfg.data.eval_dir if cfg.data.layout == "folder" else f"{cfg.data.layout} test split"
        lines += [f"## Evaluation photos ({n} images from {where}; never used for training, validation or calibration)",
                  "", "PSNR-RGB: all channels, no border shave (MAI style). PSNR-Y / SSIM-Y: BT.601 luma"
                  + (f", {info.border}-pixel border shaved." if info.border else "."), "",
                  format_table(rows, baseline=first), ""]
        if int8_gaps(rows):
            lines += [int8_gaps(rows), ""]
    stress = results.get("stress") or {}
    if stress:
        n = next(iter(stress.values()))["n_images"]
        lines += [f"## Stress photos ({n} images from {cfg.data.stress_dir}: smooth, bright, saturated; never used "
                  "for training, validation or calibration)", "",
                  "Where a fixed INT8 noise floor costs the most dB; same metrics and degradation as above.", "",
                  format_table(stress, baseline=next(iter(stress))), ""]
        if int8_gaps(stress):
            lines += [int8_gaps(stress), ""]
    if cfg.qat.enabled and cfg.qat.select_dir:
        lines += [f"The QAT checkpoint was chosen on the photos of {cfg.qat.select_dir} (qat.select_dir: fake-quant "
                  f"PSNR-RGB every {cfg.qat.train.val_every} steps; the QAT curve below is on them); the FP32 stages "
                  "chose on the held-out training crops.", ""]
    if results.get("export_error"):
        lines += ["## Export failed", "", f"The INT8 conversion was refused: `{results['export_error']}`", ""]
    if results["parity"]:
        lines += ["## Parity of the artifacts with the fake-quant model", "",
                  format_parity(ParityReport.from_dict(results["parity"])), ""]
    if (run_dir / "curves.png").is_file():
        lines += ["## Training curves", "", "![training curves](curves.png)", ""]
    t = results.get("timings_s", {})
    if t:
        lines += ["## Wall-clock time", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in t.items()] + [""]
    export_dir = run_dir / "export"
    shipped = sorted(p.name for p in export_dir.iterdir() if p.is_file()) if export_dir.is_dir() else []
    # name what is there: a run with export (or QAT) switched off has no export/ folder
    lines += [(f"Artifacts: `export/` ({', '.join(shipped)}). " if shipped else "No INT8 artifacts (export off). ")
              + "Resolved config: `config.yaml`. Per-step metrics: `metrics.csv`.", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    if not metrics_csv.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for stage in stages:
        rs = [r for r in rows if r["stage"] == stage]
        steps = [offset + int(r["step"]) for r in rs]
        axes[0].plot(steps, [float(r["loss"]) for r in rs], label=stage)
        vals = [(offset + int(r["step"]), float(r["val_psnr"])) for r in rs if r["val_psnr"]]
        if vals:
            axes[1].plot(*zip(*vals), marker="o", ms=3, label=stage)
        offset = max(steps) if steps else offset
    axes[0].set(xlabel="step (stages back to back)", ylabel="training loss", yscale="log", title="loss")
    axes[1].set(xlabel="step (stages back to back)", ylabel="validation PSNR-RGB (dB)", title="validation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
