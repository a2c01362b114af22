"""Write tests/quant/data/composed_qat_<rev>.safetensors and the uint8 output it gave, with the
code of an older revision (test_old_checkpoints.py rebuilds it with today's code):

    git worktree add /tmp/quantir-old b16d42f
    PYTHONPATH=/tmp/quantir-old/src:. python tests/quant/make_old_checkpoint.py b16d42f
"""

import sys
from pathlib import Path

import numpy as np
import torch

from quantir.models import create_model, reparameterize_model
from quantir.models.apply import run_uint8
from quantir.models.mobileone_sr import compose_stem
from quantir.quant import checkpoint
from quantir.quant.api import refresh_weight_qparams
from quantir.quant.config import QuantConfig
from tests.conftest import natural_image, short_sr_qat
from tests.quant.test_old_checkpoints import DATA, INPUT_SEED, INPUT_SIZE


def main(rev: str) -> None:
    torch.manual_seed(0)
    fused = reparameterize_model(create_model("mobileone_sr", channels=8, blocks=2, branches=2).eval())
    q, _ = short_sr_qat(lambda: compose_stem(fused), QuantConfig(weight_rounding="sum_preserving"))
    refresh_weight_qparams(q, torch.rand(1, 3, 16, 16) * 255)
    DATA.mkdir(exist_ok=True)
    checkpoint.save(checkpoint.qat_record(q, (16, 16), fused), DATA / f"composed_qat_{rev}.safetensors")
    np.save(DATA / f"composed_qat_{rev}_output.npy", run_uint8(q, natural_image(*INPUT_SIZE, seed=INPUT_SEED)))


if __name__ == "__main__":
    main(sys.argv[1])
