"""A weight soup of QAT runs: the uniform average of several QAT checkpoints of one FP32 model.

QAT runs that start from the same FP32 model and differ only in their seed (data order,
calibration batches) or weight-rounding rule end near each other. Weight soups of fine-tuned
networks (Wortsman et al., 2022) average such runs instead of picking one, in the hope that what
the runs disagree on is noise. Here the floating state is averaged (weights, biases, learned
activation ranges and zero points, clipping factors; an average stays inside the members' ranges,
so every zero point stays valid), then the weight scales are recomputed from the averaged weights:
the soup is an ordinary frozen QAT model and exports bit-exact like any other. Measured in
BENCHMARKS.md "QAT weight soups": on the QAT-only preset every soup landed inside its members'
range, and on the built-in x3 recipe none beat the best run on the selection photos (some pairs
landed below both members), so no preset uses it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from quantir.errors import ModelFileError
from quantir.quant import checkpoint
from quantir.quant.api import QuantizedModel, refresh_weight_qparams

# What the runs must share: the graph (model, its options, the traced size) and the quantization
# rule, except the weight-rounding rule (it acts on the averaged weights; the first run's applies).
SAME = ("model_name", "model_cfg", "example_hw")


def _rule(record: dict) -> dict:
    return {k: v for k, v in (record.get("quant_config") or {}).items() if k != "weight_rounding"}


def _same_float_model(records: list[dict], names: list[str]) -> None:
    """Every run must start from one FP32 model: it is the soup's export reference, and averaging runs
    from different starts would mix basins."""
    first = records[0].get("float")
    for rec, name in zip(records[1:], names[1:]):
        other = rec.get("float")
        if first is None or other is None:
            raise ModelFileError(f"{name if other is None else names[0]}: no FP32 reference in the checkpoint "
                                 "(a slimmed built-in checkpoint?); a soup needs the QAT runs' own qat_final")
        a, b = first["state_dict"], other["state_dict"]
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            raise ModelFileError(f"{name}: trained from another FP32 model than {names[0]}; "
                                 "a soup averages QAT runs of one FP32 model")


def average_records(records: list[dict], names: list[str] | None = None) -> dict:
    """One QAT record whose floating tensors are the mean of ``records``' (the first record's quant
    config, weight-rounding rule included, and its integer buffers)."""
    names = names or [f"checkpoint {i}" for i in range(len(records))]
    if len(records) < 2:
        raise ModelFileError("a soup needs at least two QAT checkpoints")
    for rec, name in zip(records, names):
        if rec.get("kind") != "qat":
            raise ModelFileError(f"{name}: not a QAT checkpoint (kind {rec.get('kind')!r})")
        for key in SAME:
            if rec.get(key) != records[0].get(key):
                raise ModelFileError(f"{name}: its {key} differs from {names[0]}'s; a soup averages runs of one graph")
        if _rule(rec) != _rule(records[0]):
            raise ModelFileError(f"{name}: quantized by another rule than {names[0]} (quant_config differs beyond "
                                 "weight_rounding); a soup averages runs of one rule")
    _same_float_model(records, names)
    states = [rec["state_dict"] for rec in records]
    if any(s.keys() != states[0].keys() for s in states[1:]):
        raise ModelFileError("the checkpoints hold different tensors (another quantization rule?)")
    averaged = {}
    for k, first in states[0].items():
        same_shape = all(s[k].shape == first.shape for s in states[1:])
        if first.dtype.is_floating_point and same_shape:
            averaged[k] = torch.stack([s[k].double() for s in states]).mean(0).to(first.dtype)
        else:  # integer buffers, and an observer's reservoir sample whose size varies: the first run's
            averaged[k] = first
    return dict(records[0], state_dict=averaged)


def soup(paths: list[str | Path]) -> tuple[QuantizedModel, dict]:
    """The frozen fake-quant soup of QAT checkpoints (or run directories) and its record, ready to save.

    Weight scales follow the averaged weights (as after the last step of a QAT run), so the
    record's weights and scales agree; activation ranges are the averaged learned ones.
    """
    resolved = [checkpoint.resolve(p) for p in paths]
    records = [checkpoint.load(p) for p in resolved]
    record = average_records(records, [str(p) for p in resolved])
    qmodel = checkpoint.build_qat(record, what="soup")
    float_model = checkpoint.build_float(record["float"], what="soup's FP32 reference")
    h, w = record["example_hw"]
    refresh_weight_qparams(qmodel, torch.rand(1, 3, h, w) * float_model.info.pixel_max)
    extra = {k: v for k, v in record.items() if k not in ("kind", "model_name", "model_cfg", "quant_config",
                                                          "example_hw", "state_dict", "float")}
    out = checkpoint.qat_record(qmodel, (h, w), float_model, soup_of=[str(p) for p in resolved], **extra)
    return qmodel, out
