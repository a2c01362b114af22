"""The peer a user would pick for PTQ: onnxruntime ``quantize_static`` (QDQ, MinMax, per-channel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class _Reader:
    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.batches = name, iter(batches)

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {self.name: b}


def ort_quantize_static(model: torch.nn.Module, calib: list[torch.Tensor], out_dir: Path) -> Path:
    """FP32 ONNX export + quant_pre_process + quantize_static; returns the QDQ model path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from torch.export import Dim

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, pre, q = out_dir / "model_fp32.onnx", out_dir / "model_pre.onnx", out_dir / "model_ort_qdq.onnx"
    core = model.export_module() if hasattr(model, "export_module") else model
    m = model.info.size_multiple
    h, w = (Dim("h", min=16, max=4096), Dim("w", min=16, max=4096)) if m == 1 else \
        (m * Dim("h", min=2, max=512), m * Dim("w", min=2, max=512))
    torch.onnx.export(core.eval(), (calib[0][:1],), str(fp32), dynamo=True, external_data=False, opset_version=18,
                      dynamic_shapes=({2: h, 3: w},), verbose=False)
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    import onnx

    name = onnx.load(str(pre)).graph.input[0].name
    quantize_static(str(pre), str(q), _Reader(name, [c[:1].numpy() for c in calib]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return q


def ort_predictor(path: Path, pixel_max: float, multiple: int = 1, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        ph, pw = (-h) % multiple, (-w) % multiple
        x = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge") if (ph or pw) else img
        x = (x.astype(np.float32) * (pixel_max / 255.0)).transpose(2, 0, 1)[None]
        y = sess.run(None, {name: x})[0][0].transpose(1, 2, 0) * (255.0 / pixel_max)
        s = y.shape[0] // x.shape[2]
        return np.clip(np.round(y[: h * s, : w * s]), 0, 255).astype(np.uint8)

    return run, sess
