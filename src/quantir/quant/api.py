"""torchao-style API: ``prepare_qat`` / ``prepare_ptq`` -> train or ``calibrate`` -> ``convert``.

The prepared model is a ``QuantizedModel``: an NCHW-in/NCHW-out module around a PT2E graph with
NHWC I/O, so the permutes at the edges are inside the quantized graph and the converted
artifact has int8 input and output. Its forward is the fake-quant model; ``convert`` turns it
into the integer graph, which computes bit-for-bit the same outputs (tested).

Phases (``set_phase``) make the freeze schedule explicit and checkable:
``observe`` (ranges from statistics) -> ``learn`` (LSQ+ ranges trainable) -> ``freeze_ranges``
(activation ranges fixed, weight scales still follow the weights) -> ``freeze`` (every qparam
fixed: what convert exports).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import logging
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.utils import import_torchao

import_torchao()

from torch.export import Dim  # noqa: E402
from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer import QuantizationSpec  # noqa: E402

from quantir.data.task import ModelInfo  # noqa: E402
from quantir.errors import ConfigError  # noqa: E402
from quantir.models.layers import NHWC  # noqa: E402
from quantir.models.protocol import RestorationModel, as_restoration_model  # noqa: E402
from quantir.models.reparam import has_batchnorm, reparameterize_model  # noqa: E402
from quantir.numerics import IO_ZERO_POINT  # noqa: E402
from quantir.quant.config import QuantConfig  # noqa: E402
from quantir.quant.exact import emulate_integer_convs, emulate_integer_convs_converted, restore_convs  # noqa: E402
from quantir.quant.fake_quant import ActFakeQuantize, WeightFakeQuantize  # noqa: E402
from quantir.quant.instance_norm import bind_level_scales, freeze_level_scales  # noqa: E402
from quantir.quant.observers import RangeObserver  # noqa: E402
from quantir.quant.odm import enable_mismatch  # noqa: E402
from quantir.quant.graph_ops import GRID_RESIDUAL_META  # noqa: E402
from quantir.quant.quantizer import FullIntQuantizer, IOQuant  # noqa: E402
from quantir.quant.rewrite import module_path  # noqa: E402
from quantir.quant.support import inspect_model  # noqa: E402

log = logging.getLogger(__name__)
# Share of a grid residual's calibration values beyond the output grid's +-128 levels above which
# calibration warns: a few clipped highlights cost nothing measurable, a systematic shift does.
RESIDUAL_CLIP_WARN = 1e-4


class Phase(str, enum.Enum):
    """The freeze schedule, in order (torchao's QATStep style: a closed set, not free strings)."""

    OBSERVE = "observe"
    LEARN = "learn"
    FREEZE_RANGES = "freeze_ranges"
    FREEZE = "freeze"


PHASES = tuple(p.value for p in Phase)


class QuantizedModel(nn.Module):
    """Fake-quant (prepared) or integer (converted) graph behind an NCHW interface.

    A converted model carries every graph that ships: ``graph_module`` runs (integer-exact convs),
    ``export_graph`` is lowered to TFLite (plain Q/DQ patterns the converter recognises) and
    ``onnx_graph`` to ONNX (the same conversion with int8 weights folded to constants). Both are
    kept out of the module tree.
    """

    def __init__(self, graph: torch.fx.GraphModule, info: ModelInfo, config: QuantConfig, quantizer,
                 converted: bool = False, export_graph: torch.fx.GraphModule | None = None,
                 onnx_graph: torch.fx.GraphModule | None = None, source_model_name: str | None = None,
                 source_model_cfg=None):
        super().__init__()
        self.graph_module = graph
        self.info, self.config, self.quantizer, self.converted = info, config, quantizer, converted
        self.__dict__["export_graph"] = export_graph if export_graph is not None else graph
        self.__dict__["onnx_graph"] = onnx_graph
        self.source_model_name, self.source_model_cfg = source_model_name, source_model_cfg
        self.phase = Phase.FREEZE if converted else Phase.OBSERVE
        self.grid_residuals: dict[str, str] = {}  # fake-quant module -> layer, of residuals on the output grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.info.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = self.graph_module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if ph or pw:
            s = self.info.scale
            y = y[..., : h * s, : w * s]
        return y

    def train(self, mode: bool = True):
        # Exported graphs refuse .train()/.eval(); torchao swaps the mode-dependent ops instead.
        self.training = mode
        if not self.converted:
            (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph_module)
        return self

    def fake_quantizers(self) -> list[nn.Module]:
        return [m for m in self.graph_module.modules() if isinstance(m, (ActFakeQuantize, WeightFakeQuantize))]


def _specs(config: QuantConfig, learnable: bool) -> tuple[QuantizationSpec, QuantizationSpec]:
    amin, amax = config.act_qrange
    wmin, wmax = config.weight_qrange
    observer = RangeObserver.with_args(method=config.act_range, percentile=config.act_percentile)
    act = QuantizationSpec(
        dtype=torch.int8, quant_min=amin, quant_max=amax, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=ActFakeQuantize.with_args(observer=observer, learnable=learnable,
                                                             grad_scaling=config.lsq_grad_scaling))
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=wmin, quant_max=wmax, ch_axis=0,
        qscheme=torch.per_channel_symmetric if config.weight_per_channel else torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=WeightFakeQuantize.with_args(clip_percentile=config.weight_clip_percentile,
                                                                rounding=config.weight_rounding))
    return act, weight


def _export(model: RestorationModel, example: torch.Tensor) -> torch.fx.GraphModule:
    info = model.info
    if example.dim() != 4 or example.shape[1] != 3:
        raise ConfigError(f"example input must be Bx3xHxW, got {tuple(example.shape)}")
    m = info.size_multiple
    if example.shape[-2] % m or example.shape[-1] % m:
        raise ConfigError(f"example input H and W must be multiples of {m} for this model")
    if example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)  # torch.export specialises a batch of 1
    core = model.export_module()
    batch = Dim("batch", min=1, max=4096)
    if m == 1:
        lo = 4 if info.is_sr else 16  # encoder-decoders need a few pixels left at the bottleneck
        h, w = Dim("height", min=lo, max=16384), Dim("width", min=lo, max=16384)
    else:
        h, w = m * Dim("h", min=1, max=16384 // m), m * Dim("w", min=1, max=16384 // m)
    nhwc = example.permute(0, 2, 3, 1).contiguous()
    ep = torch.export.export(NHWC(core).eval(), (nhwc,), dynamic_shapes=({0: batch, 1: h, 2: w},))
    return ep.module()


def _prepare(model: nn.Module, example: torch.Tensor, config: QuantConfig, learnable: bool,
             info: ModelInfo | None) -> QuantizedModel:
    model = as_restoration_model(model, info)
    model, _ = inspect_model(model, example, allow_float_ops=config.allow_float_ops)  # user models: rewrite, check
    if has_batchnorm(model):
        model = reparameterize_model(model)  # QAT runs on the fused deploy graph (AIO_MAI recipe)
    if has_batchnorm(model):
        raise ConfigError("model still has BatchNorm after reparameterize(); fold it before quantization")
    model = copy.deepcopy(model).eval()
    model.clamp_output = True
    info = model.info
    act, weight = _specs(config, learnable and config.learn_act_ranges)
    kept = (None, None)  # KeepLayers: float layers get no quantizer, 8-bit ones the 8-bit specs
    if config.keep.mode == "8bit":
        kept = _specs(dataclasses.replace(config, act_bits=8, weight_bits=8), learnable and config.learn_act_ranges)
    quantizer = FullIntQuantizer(act, weight, IOQuant(scale=info.io_scale, zero_point=IO_ZERO_POINT),
                                 keep=config.keep, kept_specs=kept, conv_inputs_only=config.act_scope == "conv_inputs",
                                 align_residual=config.residual_on_output_grid and config.act_bits == 8)
    graph = prepare_qat_pt2e(_export(model, example), quantizer)
    bind_level_scales(graph)  # InstanceNorm statistics read their inputs' live scales
    grid_residuals = {u.target: module_path(n) or n.name for n in graph.graph.nodes if n.meta.get(GRID_RESIDUAL_META)
                      for u in n.users if u.op == "call_module"}  # before the exact convs replace the nodes
    if config.exact_conv:
        emulate_integer_convs(graph, elementwise=config.exportable)
    qmodel = QuantizedModel(graph, info, config, quantizer, source_model_name=model.model_name,
                            source_model_cfg=model.model_cfg)
    qmodel.grid_residuals = grid_residuals
    if config.odm.enabled:
        enable_mismatch(qmodel, config.odm.detach_q)
    set_phase(qmodel, Phase.OBSERVE)
    return qmodel.train()


def prepare_qat(model: nn.Module, example_input: torch.Tensor, config: QuantConfig = QuantConfig(),
                info: ModelInfo | None = None) -> QuantizedModel:
    """Export ``model`` (fusing re-parameterizable blocks first) and insert trainable fake quantizers.

    ``info`` declares what a plain ``nn.Module`` computes (task, scale, pixel range); registered
    models carry their own.
    """
    return _prepare(model, example_input, config, learnable=True, info=info)


def prepare_ptq(model: nn.Module, example_input: torch.Tensor, config: QuantConfig = QuantConfig(),
                info: ModelInfo | None = None) -> QuantizedModel:
    """Like ``prepare_qat`` but for post-training quantization: ranges come only from ``calibrate``."""
    return _prepare(model, example_input, config, learnable=False, info=info)


def set_phase(qmodel: QuantizedModel, phase: Phase | str) -> None:
    """Switch every fake quantizer to a phase of the schedule (see module docstring)."""
    try:
        phase = Phase(phase)
    except ValueError:
        raise ConfigError(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}") from None
    for fq in qmodel.fake_quantizers():
        if isinstance(fq, ActFakeQuantize):
            fq.enable_observer(phase is Phase.OBSERVE)
            fq.set_learning(phase is Phase.LEARN and qmodel.config.learn_act_ranges)
        elif isinstance(fq, WeightFakeQuantize):
            fq.enable_observer(phase is not Phase.FREEZE)
            fq.gamma.requires_grad_(fq.clip_percentile is not None and phase is not Phase.FREEZE)
    qmodel.phase = phase


@torch.no_grad()
def calibrate(qmodel: QuantizedModel, batches: Iterable[torch.Tensor], n_batches: int | None = None) -> int:
    """Observe activation ranges on ``batches`` (calibration data, never evaluation data), then freeze."""
    set_phase(qmodel, Phase.OBSERVE)
    was_training = qmodel.training
    qmodel.eval()
    used = 0
    with grid_residual_clipping(qmodel):
        for x in batches:
            if n_batches is not None and used >= n_batches:
                break
            qmodel(x)
            used += 1
    set_phase(qmodel, Phase.FREEZE)
    qmodel.train(was_training)
    return used


@contextlib.contextmanager
def grid_residual_clipping(qmodel: QuantizedModel, warn: bool = True) -> Iterator[dict[str, float]]:
    """Count, over the forwards inside the block, how often a residual on the output grid clips.

    ``QuantConfig.residual_on_output_grid`` fixes the range of an output residual to the output's
    grid, +-128 levels (+-0.5 of the pixel range): exact for SR corrections, but a network that
    shifts colours or brightness further (an enhancer trained on real photo pairs) would clip. The
    yielded dict fills on exit with each such layer's clipped share; above ``RESIDUAL_CLIP_WARN``
    a warning names the layer and the switch that gives the residual a learned range instead.
    """
    counts: dict[str, list[int]] = {}
    handles = []
    modules = dict(qmodel.graph_module.named_modules())
    for name, layer in qmodel.grid_residuals.items():
        def count(fq, args, _layer=layer):
            x, s, z = args[0].detach(), float(fq.scale), int(fq.zero_point)
            lo, hi = s * (fq.quant_min - z - 0.5), s * (fq.quant_max - z + 0.5)
            c = counts.setdefault(_layer, [0, 0])
            c[0] += int(((x < lo) | (x > hi)).sum())
            c[1] += x.numel()

        handles.append(modules[name].register_forward_pre_hook(count))
    shares: dict[str, float] = {}
    try:
        yield shares
    finally:
        for h in handles:
            h.remove()
        shares.update({layer: clipped / max(total, 1) for layer, (clipped, total) in counts.items()})
        for layer, share in shares.items():
            if warn and share > RESIDUAL_CLIP_WARN:
                log.warning("the residual of %s clips on %.2f %% of the calibration values (beyond the output grid's "
                            "+-128 levels); set qat.quant.residual_on_output_grid: false to give it a learned range",
                            layer or "the output layer", 100 * share)


@torch.no_grad()
def refresh_weight_qparams(qmodel: QuantizedModel, example: torch.Tensor) -> None:
    """Recompute weight scales from the current weights (after the last optimiser step), then fix all."""
    saved = qmodel.phase
    for fq in qmodel.fake_quantizers():
        if isinstance(fq, WeightFakeQuantize):
            fq.enable_observer(True)
        elif isinstance(fq, ActFakeQuantize):
            fq.enable_observer(False)
    was_training = qmodel.training
    qmodel.eval()
    qmodel(example[:1])
    qmodel.train(was_training)
    set_phase(qmodel, saved)


def plain_graph(qmodel: QuantizedModel) -> torch.fx.GraphModule:
    """A copy of the prepared graph ready for convert_pt2e and the exporters.

    Convs are plain aten convs again, and every weight is snapped onto its int8 grid (q * s):
    re-quantizing an on-grid weight gives q under any rounding rule, whereas a converter that
    rounds ties differently from PyTorch would flip the rare weight sitting on a .5 boundary.
    """
    graph = copy.deepcopy(qmodel.graph_module)
    restore_convs(graph)
    freeze_level_scales(graph)
    with torch.no_grad():
        for node in graph.graph.nodes:
            fq = graph.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(fq, WeightFakeQuantize) and node.args[0].op == "get_attr":
                weight = graph.get_parameter(node.args[0].target)
                weight.copy_(fq.snap(weight))  # the codes fake-quant trained with, whatever its rounding rule
    return graph


def convert(qmodel: QuantizedModel, example: torch.Tensor | None = None) -> QuantizedModel:
    """Integer graph of a frozen QAT/PTQ model (weights int8 per channel, activations int8).

    With ``example`` given, weight scales are first refreshed from the current weights; without,
    the model must already be in the ``freeze`` phase.
    """
    if not qmodel.config.exportable:
        c = qmodel.config
        if c.act_scope != "all":
            why = f"only conv inputs quantized (quant.act_scope: {c.act_scope})"
        elif c.keep.mode == "float":
            why = "layers kept in float (quant.keep.mode: float)"
        else:
            why = f"W{c.weight_bits}A{c.act_bits}"
        raise ConfigError(f"only all-8-bit models convert (this one has {why})")
    if example is not None:
        refresh_weight_qparams(qmodel, example)
    set_phase(qmodel, Phase.FREEZE)
    qmodel.eval()
    export_graph, onnx_graph = (_eval_mode(convert_pt2e(plain_graph(qmodel), fold_quantize=fold))
                                for fold in (False, True))
    graph = export_graph
    if qmodel.config.exact_conv:
        graph = copy.deepcopy(export_graph)
        emulate_integer_convs_converted(graph, elementwise=qmodel.config.exportable)
    out = QuantizedModel(graph, qmodel.info, qmodel.config, qmodel.quantizer, converted=True,
                         export_graph=export_graph, onnx_graph=onnx_graph,
                         source_model_name=qmodel.source_model_name, source_model_cfg=qmodel.source_model_cfg)
    out.training = False
    return out


def _eval_mode(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    for m in graph.modules():
        m.training = False
    return graph
