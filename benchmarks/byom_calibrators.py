"""Which PTQ calibrator for user networks: fake-quant PSNR of each range method, same weights and photos.

    python benchmarks/byom_calibrators.py --weights runs/byom --train data/samples/train --eval data/samples/eval

Uses the FP32 weights benchmarks/byom.py trained (runs/byom/<net>/fp32.pt). For each net and each
activation range method, PTQ on 32 crops of the training photos (as ``quantir quantize`` does),
then PSNR-RGB on the evaluation photos of the fake-quant model (what the TFLite artifact computes
bit for bit) and of the FP32 model. The default of ``quantir quantize --calib-range`` comes from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.byom import NETS, SCALE, make_loaded  # noqa: E402
from quantir.data.task import ModelInfo  # noqa: E402
from quantir.evaluate.evaluate import evaluate  # noqa: E402
from quantir.models.apply import run_uint8  # noqa: E402
from quantir.models.protocol import WrappedModel  # noqa: E402
from quantir.quant.api import calibrate, prepare_ptq  # noqa: E402
from quantir.quant.config import QuantConfig  # noqa: E402
from quantir.quant.observers import RangeMethod  # noqa: E402
from quantir.quant.support import inspect_model  # noqa: E402
from quantir.train.quantize_run import crop_pool  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="runs/byom")
    ap.add_argument("--train", default="data/samples/train")
    ap.add_argument("--eval", default="data/samples/eval")
    ap.add_argument("--nets", nargs="+", default=list(NETS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.nets:
        make, pixel_max = NETS[name]
        info = ModelInfo(task="sr", scale=SCALE, pixel_max=pixel_max)
        net = make_loaded(make, Path(args.weights) / name / "fp32.pt").eval()
        float_model, _ = inspect_model(WrappedModel(net, info), torch.rand(2, 3, 32, 32) * pixel_max)
        pairs = info.eval_pairs(args.eval)
        row = {"model": name, "fp32": evaluate(lambda im: run_uint8(float_model, im), pairs, border=SCALE)["psnr_rgb"]}
        crops = crop_pool(info, args.train, 32, 32, 0)
        for method in RangeMethod:
            q = prepare_ptq(float_model, torch.rand(2, 3, 32, 32) * pixel_max,
                            QuantConfig(act_range=method, learn_act_ranges=False))
            calibrate(q, crops)
            q.eval()
            row[method.value] = evaluate(lambda im: run_uint8(q, im), pairs, border=SCALE)["psnr_rgb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    methods = [m.value for m in RangeMethod]
    print("| model | FP32 | " + " | ".join(f"PTQ {m}" for m in methods) + " |")
    print("|---|---:|" + "---:|" * len(methods))
    for r in rows:
        print(f"| {r['model']} | {r['fp32']:.3f} | " + " | ".join(f"{r[m]:.3f}" for m in methods) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
