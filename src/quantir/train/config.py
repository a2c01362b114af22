"""Training configuration: frozen dataclasses; YAML presets in ``configs/`` only override defaults.

Stages (docs/papers.md 3.3): ``teacher`` (optional FP32 teacher, outputs cached), ``stage1``
(FP32 reconstruction on the multi-branch model), ``stage2`` (fidelity refinement: Charbonnier +
DCT + confidence-weighted distillation), BN recalibration + fusion, ``qat`` (stage 3 on the
fused graph, distilled from the fused FP32 model), then export and evaluation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from quantir.config import check_choices
from quantir.data.degrade import DegradationConfig
from quantir.data.task import ModelInfo, Task
from quantir.errors import ConfigError, require
from quantir.export.config import ExportConfig
from quantir.quant.config import QuantConfig
from quantir.train.device import check_device_spec


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (0 = off). Images are compared on a [0, 1] scale.

    SR defaults follow AIO_MAI; the enhancement terms are QATIE's (PSNR on Y, cosine,
    outlier-aware). ``kd`` is output distillation; in stage 2 it is confidence-weighted by the
    teacher's own error w = clip(exp(-kd_gamma * e), kd_w_min, kd_w_max).
    """

    l1: float = 0.0
    charbonnier: float = 0.0
    dct: float = 0.0
    psnr_y: float = 0.0
    cosine: float = 0.0
    outlier: float = 0.0
    kd: float = 0.0
    kd_confidence: bool = True
    kd_gamma: float = 10.0
    kd_w_min: float = 0.10
    kd_w_max: float = 0.75

    def __post_init__(self):
        require(all(getattr(self, f.name) >= 0 for f in dataclasses.fields(self)
                    if f.type in ("float", float)), "loss weights must be >= 0")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    enabled: bool = True
    steps: int = 1000
    lr: float = 1e-3
    lr_min: float = 1e-6
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup: int = 0  # linear warm-up steps (from lr/10)
    step_size: int = 1000  # step schedule: halve every step_size steps
    batch: int | None = None  # None: data.batch
    patch: int | None = None  # None: data.patch
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    ema: float = 0.999  # EMA decay of weights and buffers (0 = off)
    weight_clip: float = 0.0  # clamp conv weights to +-weight_clip after each step (0 = off)
    val_every: int = 250
    ckpt_every: int = 250
    loss: LossConfig = LossConfig(l1=1.0)

    def __post_init__(self):
        check_choices(self)
        require(self.steps >= 0, "steps must be >= 0")
        require(self.lr > 0, "lr must be positive")
        require(self.val_every > 0 and self.ckpt_every > 0, "val_every and ckpt_every must be positive")
        require(0 <= self.ema < 1, "ema must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TeacherStageConfig:
    enabled: bool = False
    model: str = "sr_teacher"
    model_options: dict = dataclasses.field(default_factory=dict)
    train: StageConfig = StageConfig(steps=2000, lr=5e-4, loss=LossConfig(l1=1.0))


@dataclasses.dataclass(frozen=True)
class QATConfig:
    enabled: bool = True
    quant: QuantConfig = QuantConfig()
    calib_batches: int = 16  # forward-only range initialisation before training
    freeze_ranges_at: float = 0.8  # fraction of steps after which activation ranges stop learning
    quant_lr_mult: float = 10.0  # learning-rate multiplier for ranges and clipping gammas (ODM: 10x)
    # Channel equalization across mobileone_sr's global skip before QAT (quant/equalize.py): the
    # exponent alpha in (0, 1], None = off. Float function unchanged; the QAT copy is rescaled.
    equalize_skip: float | None = None
    # QAT on mobileone_sr with its linear stem composed into the two convs that read it
    # (models/mobileone_sr.compose_stem): the wide stem and skip tensors are never quantized.
    # The fused FP32 model stays the teacher and the report's reference.
    compose_stem: bool = False
    # With compose_stem: the direct conv's int8 range in pixel levels (+-R on a grid of R/127);
    # beyond it, edge branches add the excess on the input grid (compose_stem's direct_split).
    # 0 = one direct conv on a learned range.
    direct_split: float = 0.0
    # Photos the QAT checkpoints (every val_every steps) are scored on to keep the best: whole photos,
    # degraded as the eval photos, fake-quant PSNR-RGB. None: the held-out training crops, as in the
    # FP32 stages. A validation split like the photos the model will meet (e.g.
    # data/samples/stress_val), never a folder the report is made on or the model trains on.
    select_dir: str | None = None
    # Where the weights start on their grid (quant/weight_start.py), measured on calibration batches:
    # AdaRound-style learned rounding (QAT starts from those codes) and bias correction of the
    # rounding's mean output shift. Off: neither helped the x3 recipes beyond the seed noise
    # (BENCHMARKS.md "AdaRound and bias correction").
    adaround: bool = False
    bias_correction: bool = False
    train: StageConfig = StageConfig(steps=500, lr=2e-5, lr_min=1e-7, ema=0.0,
                                     loss=LossConfig(l1=0.1, kd=1.0, kd_confidence=False))

    def __post_init__(self):
        require(0.0 <= self.freeze_ranges_at <= 1.0, "freeze_ranges_at must be in [0, 1]")
        require(self.equalize_skip is None or 0.0 < self.equalize_skip <= 1.0, "equalize_skip must be in (0, 1]")
        require(not (self.compose_stem and self.equalize_skip is not None),
                "compose_stem removes the skip tensors that equalize_skip rescales: set one of them")
        require(self.direct_split >= 0 and (self.direct_split == 0 or self.compose_stem),
                "qat.direct_split needs qat.compose_stem and must be >= 0")
        require(not (self.adaround or self.bias_correction) or self.quant.rounds_every_conv_on_max_grid,
                "qat.adaround and qat.bias_correction need every conv on the max|W| grid: "
                "no quant.weight_clip_percentile, no quant.keep")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_dir: str = "data/samples/train"
    extra_train_dirs: tuple[str, ...] = ()
    val_holdout: int = 4  # photos of train_dir kept out of training for validation / model selection
    eval_dir: str | None = "data/samples/eval"  # evaluation photos for the report (never trained on)
    eval_inputs_dir: str | None = None  # real inputs matched to eval_dir by name (e.g. DPED phone photos)
    # Hard photos (issue 15: smooth, bright, saturated) reported next to eval_dir when the folder
    # exists ('quantir data fetch samples' fetches it); never trained, validated or calibrated on.
    stress_dir: str | None = "data/samples/stress"
    layout: Literal["folder", "div2k", "dped"] = "folder"
    root: str | None = None  # DIV2K or DPED root for those layouts
    phone: str = "iphone"
    hr_downscale: int | None = None  # clean-HR downscale of training photos (None: /2, or /4 for 4K+)
    patch: int = 48  # input patch (LR side for SR)
    batch: int = 16
    workers: int = 0
    flat_threshold: float = 2.0
    val_size: int = 384  # validation crops (target side) keep validation fast on CPU
    eval_limit: int | None = None
    degradation: DegradationConfig = DegradationConfig()

    def __post_init__(self):
        check_choices(self)
        require(self.patch >= 8 and self.batch >= 1, "patch must be >= 8 and batch >= 1")
        require(self.layout == "folder" or self.root, f"root is required for layout {self.layout!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: Task = Task.SR
    scale: int = 3
    model: str = "mobileone_sr"
    model_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    deterministic: bool = True
    threads: int | None = None
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N; checkpoints are device-free
    amp: bool = True  # bf16 autocast for the FP32 stages and the teacher on CUDA (QAT and the CPU never)
    # BN statistics re-estimated on this many training batches before fusion (AIO_MAI); 0 keeps
    # the running statistics the checkpoint trained with (the QAT-only preset, whose patches differ)
    bn_recal_batches: int = 64
    data: DataConfig = DataConfig()
    teacher: TeacherStageConfig = TeacherStageConfig()
    stage1: StageConfig = StageConfig(steps=2000, lr=1e-3, warmup=100, loss=LossConfig(l1=1.0))
    stage2: StageConfig = StageConfig(steps=500, lr=5e-5, schedule="step", step_size=250,
                                      loss=LossConfig(charbonnier=1.0, dct=0.02, kd=0.03))
    qat: QATConfig = QATConfig()
    export: ExportConfig = ExportConfig()

    def __post_init__(self):
        object.__setattr__(self, "task", Task(self.task))
        check_device_spec(self.device)
        require(self.task is not Task.SR or self.scale in (2, 3, 4), "scale must be 2, 3 or 4")
        require(self.task is not Task.ENHANCE or self.data.layout != "div2k", "DIV2K is an SR layout")
        require(self.qat.enabled or not self.export.enabled, "export needs the QAT stage (qat.enabled)")
        require(self.bn_recal_batches >= 0, "bn_recal_batches must be >= 0 (0 keeps the running statistics)")
        if self.qat.select_dir is not None:  # choosing on the photos reported (or trained) on would flatter the report
            d = self.data
            taken = {"data.train_dir": d.train_dir, "data.eval_dir": d.eval_dir, "data.stress_dir": d.stress_dir,
                     **{f"data.extra_train_dirs[{i}]": x for i, x in enumerate(d.extra_train_dirs)}}
            same = [k for k, v in taken.items() if v is not None and _same_folder(v, self.qat.select_dir)]
            if same:
                raise ConfigError(f"qat.select_dir is the folder of {same[0]}: choose the QAT checkpoint on photos "
                                  "that are neither trained nor reported on")

    @property
    def sr_scale(self) -> int:
        return self.scale if self.task is Task.SR else 1

    @property
    def task_info(self) -> ModelInfo:
        """Task and scale as a ``ModelInfo``: the border shave, baseline and evaluation pairs of this run."""
        return ModelInfo(task=self.task, scale=self.sr_scale)


def _same_folder(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
