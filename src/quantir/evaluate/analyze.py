"""Where the INT8 error of a restoration model sits, in dB of the output (``quantir analyze``).

For every fake quantizer of a QAT model (weights and activations apart): the SQNR of the tensor
it quantizes, the PSNR lost when only that tensor is quantized, and the PSNR won back when only
that tensor is left in float, on the photos given. AIMET's QuantAnalyzer and torchao's numeric
debugger do this for classifiers (accuracy, SQNR); restoration models need it in dB of the image.

The sweep runs the model with plain PT2E fake-quant ops: the integer-exact kernels (``quant.exact``)
round to the grid inside the op, so a quantizer switched off there would still quantize; they are
put back afterwards. The all-quantized row of the sweep is reported next to the exact model's PSNR
(they differ by the odd rounding tie, a few thousandths of a dB).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from quantir.data.datasets import Pair
from quantir.data.metrics import psnr
from quantir.errors import ModelFileError
from quantir.models.apply import run_uint8
from quantir.quant import checkpoint
from quantir.quant.exact import emulate_integer_convs, restore_convs
from quantir.quant.fake_quant import ActFakeQuantize, WeightFakeQuantize
from quantir.quant.layer_roles import model_path
from quantir.utils import atomic_write_text

TensorKind = Literal["weight", "activation"]


@dataclasses.dataclass(frozen=True)
class TensorReport:
    quantizer: str  # the fake-quant module in the graph
    tensor: str  # what it quantizes, by module path
    kind: TensorKind
    levels: int  # grid points (256 at 8 bits)
    sqnr_db: float  # 10 log10(|x|^2 / |x - q(x)|^2) of this tensor, float model's values
    cost_db: float  # PSNR(all float) - PSNR(only this tensor quantized)
    gain_db: float  # PSNR(all but this tensor quantized) - PSNR(all quantized)


@dataclasses.dataclass(frozen=True)
class Analysis:
    n_images: int
    psnr_float: float  # every quantizer off: the QAT weights in float
    psnr_quantized: float  # every quantizer on (plain fake-quant ops)
    psnr_exact: float  # the model as it ships (integer-exact fake-quant = the artifacts)
    psnr_fp32: float | None  # the run's FP32 model before QAT, when given
    per_image: dict[str, dict[str, float]]  # name -> PSNR of each form and the INT8 - float gap
    tensors: list[TensorReport]  # ranked: largest gain from leaving it in float first

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _quantizers(gm: torch.fx.GraphModule) -> dict[str, tuple[torch.nn.Module, str, TensorKind]]:
    """Graph module name -> (quantizer, readable tensor name, kind), in graph order."""
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in found:
            continue
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, (ActFakeQuantize, WeightFakeQuantize)):
            continue
        src, user = node.args[0], next(iter(node.users), None)
        if isinstance(mod, WeightFakeQuantize):
            where = model_path(user) if user is not None else ""
            found[node.target] = (mod, f"{where or src.name}.weight", "weight")
            continue
        if src.op == "placeholder":
            name = "input pixels"
        elif src.op == "call_function":
            op = getattr(src.target, "__name__", str(src.target)).split(".")[0]
            inner = src.args[0] if src.args and isinstance(src.args[0], torch.fx.Node) else None
            if inner is not None and inner.op == "call_module" and inner.args:  # a shared-qparams op: past its input's
                inner = inner.args[0]
            own = model_path(src)
            layer = model_path(inner) if inner is not None and inner.op == "call_function" else None
            if op in ("relu", "clamp") and layer is not None and (own in ("", "model") or layer.startswith(own + ".")):
                # a functional activation (torch.relu in forward()) has no module of its own: name its layer's
                inner_op = getattr(inner.target, "__name__", "").split(".")[0]
                name = f"{layer or '(top)'} {inner_op} {op}"
            else:
                name = f"{model_path(src) or '(top)'} {op}"
        else:  # re-quantization of another quantizer's output: name it by its reader
            op = getattr(getattr(user, "target", None), "__name__", "output").split(".")[0]
            name = f"{model_path(user) if user is not None else '(top)'} {op} input"
        found[node.target] = (mod, name, "activation")
    return found


def _set_enabled(quantizers, on: Callable[[str], bool]) -> None:
    for name, (mod, _, _) in quantizers.items():
        if on(name):
            mod.enable_fake_quant()
        else:
            mod.disable_fake_quant()


def _psnrs(model, pairs: Sequence[Pair]) -> list[float]:
    with torch.no_grad():
        return [psnr(run_uint8(model, p.input), p.target) for p in pairs]


def _weight_sqnr(w: torch.Tensor, mod: WeightFakeQuantize) -> float:
    w = w.detach()
    with torch.no_grad():
        mod.enable_fake_quant()
        q = mod(w)
    return _sqnr(float((w.double() ** 2).sum()), float(((w - q).double() ** 2).sum()))


def _sqnr(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


class _ErrorMeter:
    """Forward hook: accumulates |x|^2 and |x - q(x)|^2 of one activation quantizer."""

    def __init__(self):
        self.signal = self.noise = 0.0

    def __call__(self, module, args, out):
        x = args[0].detach().double()
        self.signal += float((x ** 2).sum())
        self.noise += float(((x - out.detach().double()) ** 2).sum())


def analyze(qmodel, pairs: Sequence[Pair], fp32_model: torch.nn.Module | None = None,
            progress: bool = False) -> Analysis:
    """Per-tensor INT8 error of ``qmodel`` (a frozen QAT model) on ``pairs``, in dB of PSNR-RGB."""
    if not len(pairs):
        raise ValueError("analyze needs at least one photo")
    model = qmodel.eval()
    gm = model.graph_module
    exact = _psnrs(qmodel, pairs)
    restore_convs(gm)  # plain ops for the sweep; re-emulated at the end (an exported graph cannot be deep-copied)
    quantizers = _quantizers(gm)
    if not quantizers:
        emulate_integer_convs(gm, elementwise=qmodel.config.exportable)
        raise ValueError("this model has no fake quantizers (is it a QAT checkpoint?)")
    names = list(quantizers)
    weights = {n.target: gm.get_parameter(n.args[0].target) for n in gm.graph.nodes
               if n.op == "call_module" and n.target in quantizers and quantizers[n.target][2] == "weight"}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=2 * len(names) + 2, desc="analyze", unit="run", leave=False, disable=None)

    def measured(on: Callable[[str], bool], hooks=()) -> list[float]:
        _set_enabled(quantizers, on)
        handles = [quantizers[n][0].register_forward_hook(h) for n, h in hooks]
        try:
            return _psnrs(model, pairs)
        finally:
            for h in handles:
                h.remove()
            if bar is not None:
                bar.update(1)

    try:
        floats = measured(lambda n: False)
        quantized = measured(lambda n: True)
        rows = []
        for name in names:
            mod, tensor, kind = quantizers[name]
            meter = _ErrorMeter()
            only = measured(lambda n, _name=name: n == _name, hooks=[] if kind == "weight" else [(name, meter)])
            but = measured(lambda n, _name=name: n != _name)
            sqnr = _weight_sqnr(weights[name], mod) if kind == "weight" else _sqnr(meter.signal, meter.noise)
            rows.append(TensorReport(name, tensor, kind, int(mod.quant_max) - int(mod.quant_min) + 1, sqnr,
                                     float(np.mean(floats) - np.mean(only)), float(np.mean(but) - np.mean(quantized))))
    finally:
        _set_enabled(quantizers, lambda n: True)
        emulate_integer_convs(gm, elementwise=qmodel.config.exportable)
        if bar is not None:
            bar.close()
    fp32 = _psnrs(fp32_model, pairs) if fp32_model is not None else None
    per_image = {}
    for i, p in enumerate(pairs):
        row = {"float": floats[i], "quantized": quantized[i], "exact": exact[i], "int8_minus_float": exact[i] - floats[i]}
        if fp32 is not None:
            row["fp32"] = fp32[i]
            row["int8_minus_fp32"] = exact[i] - fp32[i]
        per_image[p.name] = row
    rows.sort(key=lambda r: r.gain_db, reverse=True)
    return Analysis(len(pairs), float(np.mean(floats)), float(np.mean(quantized)), float(np.mean(exact)),
                    float(np.mean(fp32)) if fp32 is not None else None, per_image, rows)


def load_for_analysis(path: str | Path):
    """(QAT model, FP32 model or None) from a run directory or a QAT checkpoint; the FP32 model is
    the run's ``deploy_fp32`` next to the checkpoint, when there is one."""
    ckpt = checkpoint.resolve(path)
    record = checkpoint.load(ckpt)
    if record.get("kind") != "qat":
        raise ModelFileError(f"{ckpt}: not a QAT checkpoint (analyze needs the fake-quant model: qat_final)")
    qmodel = checkpoint.build(record, what=str(ckpt))
    fp32_path = ckpt.with_name(f"deploy_fp32{checkpoint.SUFFIX}")
    fp32 = checkpoint.build(checkpoint.load(fp32_path), what=str(fp32_path)) if fp32_path.is_file() else None
    return qmodel, fp32


def center_crops(pairs: Sequence[Pair], size: int, scale: int, multiple: int) -> list[Pair]:
    """Centre crops of at most ``size`` input pixels a side (a multiple of ``multiple``): the sweep
    runs the model 2N + 2 times, so it measures on crops, not on whole photos."""
    out = []
    for p in pairs:
        h, w = p.input.shape[:2]
        ch, cw = min(h, size), min(w, size)
        ch, cw = ch - ch % multiple, cw - cw % multiple
        y, x = (h - ch) // 2, (w - cw) // 2
        out.append(Pair(p.name, p.input[y:y + ch, x:x + cw],
                        p.target[y * scale:(y + ch) * scale, x * scale:(x + cw) * scale]))
    return out


def format_analysis(a: Analysis, top: int = 10) -> str:
    fp32 = f", FP32 {a.psnr_fp32:.3f}" if a.psnr_fp32 is not None else ""
    lines = [f"{a.n_images} images: float {a.psnr_float:.3f} dB, fake-quant {a.psnr_quantized:.3f} "
             f"(as shipped {a.psnr_exact:.3f}){fp32}", "",
             "| rank | tensor | kind | SQNR dB | cost if only it is quantized | gain if only it stays float |",
             "|---:|---|---|---:|---:|---:|"]
    for i, r in enumerate(a.tensors[:top], 1):
        lines.append(f"| {i} | {r.tensor} | {r.kind} | {r.sqnr_db:.1f} | {r.cost_db:+.4f} | {r.gain_db:+.4f} |")
    return "\n".join(lines)


def plot_analysis(a: Analysis, path: Path, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("activation", "weight") if any(r.kind == k for r in a.tensors)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 0.32 * top + 1.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in a.tensors if r.kind == kind][:top][::-1]
        y = np.arange(len(rows))
        ax.barh(y + 0.2, [r.gain_db for r in rows], height=0.4, label="gain if only it stays float")
        ax.barh(y - 0.2, [r.cost_db for r in rows], height=0.4, label="cost if only it is quantized")
        ax.set_yticks(y, [r.tensor for r in rows], fontsize=7)
        ax.set_xlabel("PSNR-RGB (dB)")
        ax.set_title(f"{kind}s (INT8 - float: {a.psnr_exact - a.psnr_float:+.3f} dB)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(obj):
    """JSON has no infinity: an error-free tensor's SQNR is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_analysis(a: Analysis, out_dir: str | Path) -> tuple[Path, Path]:
    """analysis.json and analysis.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "analysis.json", json.dumps(_finite(a.to_dict()), indent=2) + "\n")
    plot_analysis(a, out / "analysis.png")
    return out / "analysis.json", out / "analysis.png"
