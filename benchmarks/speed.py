"""Table 4: latency at 360x640 input on 2 threads, effective GMAC/s, MAI score; training throughput.

Runtimes are timed round-robin after warm-up (quantir.evaluate.bench). The MAI score uses each
model's INT8 TFLite PSNR from table 1. Noise: the machine is shared; read medians, not single runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from common import BenchSettings, load_json, save_json, standalone

from quantir.evaluate.bench import benchmark, mai_score


def _ort_fn(path: Path, hw, threads: int):
    from peers import ort_predictor

    run, sess = ort_predictor(path, 255.0, threads=threads)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, *hw)).astype(np.float32)
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def inference_table(settings: BenchSettings, sr: dict, hw=(360, 640)) -> list[dict]:
    rows = []
    runs = 8 if settings.quick else 25
    for name, m in sr["models"].items():
        qat_dir = Path(m["artifacts"]["qat_dir"])
        psnr_int8 = m["rows"]["QAT"]["psnr_rgb"]
        specs = [
            str(qat_dir / "model_float.tflite"),
            m["speed_artifacts"]["reshape_transpose"],
            m["speed_artifacts"]["d2s"],
            str(qat_dir / "model_int8.tflite"),
            str(qat_dir / "model_int8.onnx"),
        ]
        from quantir.export.runtime import load_runtime

        macs = load_runtime(qat_dir / "model_int8.tflite").meta.get("macs_per_pixel")
        specs.append(("onnxruntime quantize_static (QDQ)", _ort_fn(Path(m["artifacts"]["ort_qdq"]), hw,
                                                                    settings.threads), macs))
        labels = ["TFLite FP32", "TFLite INT8, reshape/transpose upsampler (static)",
                  "TFLite INT8, native DEPTH_TO_SPACE (static)", "TFLite INT8, native DEPTH_TO_SPACE (dynamic)",
                  "ONNX Runtime INT8 (quantir QDQ)", "onnxruntime quantize_static (QDQ)"]
        res = benchmark(specs, hw=hw, threads=settings.threads, runs=runs, warmup=3)
        psnr = {"TFLite FP32": m["rows"]["FP32"]["psnr_rgb"],
                "onnxruntime quantize_static (QDQ)": m["rows"]["onnxruntime quantize_static"]["psnr_rgb"]}
        for label, r in zip(labels, res):
            r["label"], r["network"] = label, name
            r["psnr_db"] = psnr.get(label, psnr_int8)
            r["mai_score"] = mai_score(r["psnr_db"], r["median_ms"])
            if "gmac" not in r and macs:
                r["gmac"] = macs * hw[0] * hw[1] / 1e9
                r["gmac_per_s"] = r["gmac"] / (r["median_ms"] / 1000)
            rows.append(r)
    return rows


def training_throughput(settings: BenchSettings) -> dict:
    """ms per step at 48x48 LR patches, batch 16: FP32 multi-branch vs QAT vs QAT + ODM (cooperative)."""
    from quantir.models import create_model, reparameterize_model
    from quantir.quant.api import prepare_qat, set_phase
    from quantir.quant.config import ODMConfig, QuantConfig
    from quantir.quant.odm import cooperative_backward, mismatch_loss

    torch.manual_seed(0)
    n = 3 if settings.quick else 10
    x = torch.rand(16, 3, 48, 48) * 255
    y = torch.rand(16, 3, 144, 144) * 255
    model = create_model("mobileone_sr")

    def time_steps(step) -> float:
        step()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) / n * 1000

    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def fp32_step():
        loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    deploy = reparameterize_model(model)
    out = {"fp32_multibranch_ms": time_steps(fp32_step)}
    for label, cfg in (("qat_ms", QuantConfig()), ("qat_odm_ms", QuantConfig(odm=ODMConfig(mismatch_weight=1e-5)))):
        q = prepare_qat(deploy, x[:2], cfg)
        with torch.no_grad():
            q(x)
        set_phase(q, "learn")
        qopt = torch.optim.Adam(q.parameters(), 1e-5)

        def q_step(q=q, qopt=qopt, odm=cfg.odm.enabled):
            qopt.zero_grad()
            loss = (q(x) - y).abs().mean()
            if odm:
                params = [(k, p) for k, p in q.named_parameters() if p.requires_grad]
                cooperative_backward(params, loss, mismatch_loss(q), 1e-5)
            else:
                loss.backward()
            qopt.step()

        out[label] = time_steps(q_step)
    out["qat_over_fp32"] = out["qat_ms"] / out["fp32_multibranch_ms"]
    out["qat_odm_over_qat"] = out["qat_odm_ms"] / out["qat_ms"]
    out["setting"] = f"mobileone_sr, 16 x 48x48 LR patches, {torch.get_num_threads()} threads"
    return out


def run(settings: BenchSettings) -> dict:
    torch.set_num_threads(settings.threads)
    sr = load_json(settings.out / "sr_quant.json")
    if sr is None:
        raise SystemExit("run benchmarks/sr_quant.py first (speed uses its artifacts and PSNRs)")
    result = {"inference": inference_table(settings, sr), "training": training_throughput(settings),
              "hw": [360, 640], "threads": settings.threads}
    save_json(result, settings.out / "speed.json")
    return result


if __name__ == "__main__":
    standalone(run)
