"""Table 1 (SR x3: PTQ vs QAT variants on the exported INT8 TFLite) and the data for tables 4 and 5.

For mobileone_sr (the paper's architecture, no anchor) and abpn: one FP32 model per architecture,
then every quantization method starts from those same FP32 weights:
* PTQ min-max / percentile / MSE with quantir's calibrators, exported to INT8 TFLite;
* onnxruntime ``quantize_static`` (QDQ, MinMax, per-channel), evaluated in onnxruntime;
* QAT plain / + weight clipping correction / + ODM cooperative regulariser / + both, exported.
Calibration always uses training photos; numbers are on the evaluation photos.
"""

from __future__ import annotations

from pathlib import Path

from common import BenchSettings, eval_artifact, eval_fn, machine, make_config, merge_entry, run_training, standalone

from quantir.export.config import ExportConfig
from quantir.export.from_checkpoint import calibration_inputs, export_checkpoint
from quantir.quant import checkpoint
from quantir.train.data import eval_pairs

MODELS = {
    "mobileone_sr": {"model": "mobileone_sr", "fp32_full": (3000, 40), "fp32_quick": (1500, 32), "stage2": True},
    "abpn": {"model": "abpn", "fp32_full": (6000, 48), "fp32_quick": (800, 32), "stage2": False},
}
QAT_VARIANTS = {
    "QAT": {},
    "QAT + WCC": {"weight_clip_percentile": 99.0},
    "QAT + ODM": {"odm": {"mismatch_weight": 1.0e-5}},
    "QAT + ODM + WCC": {"weight_clip_percentile": 99.0, "odm": {"mismatch_weight": 1.0e-5}},
}
PTQ_METHODS = {"PTQ min-max": "minmax", "PTQ percentile": "percentile", "PTQ MSE": "mse"}


def fp32_config(settings: BenchSettings, spec: dict):
    (full, patch), (quick, _) = spec["fp32_full"], spec["fp32_quick"]
    if settings.quick:
        patch = spec["fp32_quick"][1]
    steps = settings.steps(full, quick)
    base = {
        "model": spec["model"], "scale": 3,
        "data": {"patch": patch, "batch": 16},
        "stage1": {"steps": steps, "lr": 1.0e-3, "warmup": min(300, steps // 10), "val_every": max(100, steps // 6),
                   "ckpt_every": max(100, steps // 6)},
        "stage2": {"enabled": spec["stage2"] and not settings.quick, "steps": settings.steps(600, 0), "lr": 5.0e-5,
                   "schedule": "step", "step_size": 300, "val_every": 200, "ckpt_every": 200,
                   "loss": {"charbonnier": 1.0, "dct": 0.02, "kd": 0.0}},
        "qat": {"enabled": False}, "export": {"enabled": False},
    }
    return make_config(settings, "sr", base)


def qat_config(settings: BenchSettings, spec: dict, quant: dict, formats):
    steps = settings.steps(1000, 150)
    patch = spec["fp32_quick" if settings.quick else "fp32_full"][1]
    base = {
        "model": spec["model"], "scale": 3,
        "data": {"patch": patch, "batch": 16},
        "stage1": {"enabled": False}, "stage2": {"enabled": False},
        "qat": {"quant": quant, "calib_batches": 16,
                "train": {"steps": steps, "lr": 2.0e-5, "lr_min": 1.0e-7, "ema": 0.0, "val_every": max(50, steps // 5),
                          "ckpt_every": max(50, steps // 5), "loss": {"l1": 0.1, "kd": 1.0, "kd_confidence": False}}},
        "export": {"enabled": True, "formats": formats, "parity_limit": 8 if settings.quick or settings.smoke else None},
    }
    return make_config(settings, "sr", base)


def _delta(rows: dict) -> dict:
    ref = rows["FP32"]["psnr_rgb"]
    for r in rows.values():
        r["delta_rgb"] = r["psnr_rgb"] - ref
    return rows


def exact_conv_ablation(qat_ckpt: Path, out: Path, parity_dir: Path) -> dict:
    """Same weights and scales, fake-quant with float convs vs integer-exact convs: TFLite parity."""
    record = checkpoint.load(qat_ckpt)
    rows = {}
    for exact in (False, True):
        rec = dict(record, quant_config=dict(record["quant_config"], exact_conv=exact))
        tmp = out / f"exact_{exact}{checkpoint.SUFFIX}"
        checkpoint.save(rec, tmp)
        res = export_checkpoint(tmp, out / f"exact_{exact}", ExportConfig(formats=("tflite",)), parity_dir=parity_dir)
        rows["integer-exact convs" if exact else "float32 convs"] = res["parity"].to_dict()["tflite"]
    return rows


def speed_artifacts(qat_ckpt: Path, out: Path) -> dict:
    """Static 360x640 INT8 TFLite with and without the native DEPTH_TO_SPACE rewrite (for table 4)."""
    from quantir.export import tflite as tfe
    from quantir.export.api import artifact_metadata
    from quantir.quant.api import convert

    record = checkpoint.load(qat_ckpt)
    q = checkpoint.build_qat(record)
    fl = checkpoint.build_float(record["float"])
    c = convert(q)
    meta = artifact_metadata(q.info, fl)
    out.mkdir(parents=True, exist_ok=True)
    a = tfe.export_int8(c, out / "int8_360x640_d2s.tflite", meta, shape=(360, 640), native_d2s=True)
    b = tfe.export_int8(c, out / "int8_360x640_reshape.tflite", meta, shape=(360, 640), native_d2s=False)
    return {"d2s": a["path"], "reshape_transpose": b["path"]}


def run(settings: BenchSettings) -> dict:
    from peers import ort_predictor, ort_quantize_static

    out = settings.out / "sr"
    result = {"machine": machine(), "quick": settings.quick, "data": settings.data_description("sr"), "models": {}}
    for name, spec in settings.selected(MODELS).items():
        print(f"[sr] {name}", flush=True)
        cfg = fp32_config(settings, spec)
        fp32_dir = out / name / "fp32"
        fp32_res = run_training(cfg, fp32_dir)
        deploy = fp32_dir / "checkpoints" / f"deploy_fp32{checkpoint.SUFFIX}"
        ev = fp32_res["eval"]
        rows = {"bicubic": ev["bicubic"], "FP32": ev["FP32 (fused)"]}
        pairs = eval_pairs(cfg)
        calib_dir, parity_dir = settings.calib_dir("sr"), settings.parity_dir("sr")
        parity = {}
        for label, method in PTQ_METHODS.items():
            res = export_checkpoint(deploy, out / name / method, ExportConfig(formats=("tflite",)), ptq=method,
                                    calib_dir=calib_dir,
                                    parity_dir=parity_dir, parity_limit=4)
            rows[label] = eval_artifact(out / name / method / "model_int8.tflite", pairs, 3)
            parity[label] = res["parity"].to_dict()
        float_model = checkpoint.build_float(checkpoint.load(deploy))
        calib = list(calibration_inputs(float_model.info, calib_dir, n=32, size=96))
        ort_path = ort_quantize_static(float_model, calib, out / name / "ort")
        fn, _ = ort_predictor(ort_path, float_model.info.pixel_max, threads=settings.threads)
        rows["onnxruntime quantize_static"] = eval_fn(fn, pairs, 3)
        for label, quant in QAT_VARIANTS.items():
            formats = ("tflite", "onnx") if label == "QAT" else ("tflite",)
            slug = label.lower().replace(" + ", "_").replace(" ", "_")
            res = run_training(qat_config(settings, spec, quant, formats), out / name / slug, init=str(deploy))
            rows[label] = res["eval"]["INT8 TFLite"]
            rows[label]["fakequant_psnr_rgb"] = res["eval"]["INT8 fake-quant"]["psnr_rgb"]
            parity[label] = res["parity"]
        qat_ckpt = out / name / "qat" / "checkpoints" / f"qat_final{checkpoint.SUFFIX}"
        result["models"][name] = {
            "rows": _delta(rows), "parity": parity,
            "exact_conv": exact_conv_ablation(qat_ckpt, out / name / "exact", Path(parity_dir)),
            "speed_artifacts": speed_artifacts(qat_ckpt, out / name / "speed"),
            "artifacts": {"qat_dir": str(out / name / "qat" / "export"), "ort_qdq": str(ort_path),
                          "fp32_tflite": str(out / name / "qat" / "export" / "model_float.tflite")},
            "fp32_config": str(fp32_dir / "config.yaml"),
        }
        merge_entry(settings.out / "sr_quant.json", result, name, MODELS)
    return result


if __name__ == "__main__":
    standalone(run, "div2k")
