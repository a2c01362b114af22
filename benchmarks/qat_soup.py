"""A weight soup of QAT runs (quantir.quant.soup) against the runs it averages, INT8 TFLite - FP32.

The runs must be QAT runs of one FP32 model (e.g. the built-in x3 recipe's six QAT candidates of
scripts/build_builtin_models.py, or `quantir train ... --init FP32 --set seed=N` for a few N). The
soup is exported like any QAT checkpoint (parity checked), then every INT8 TFLite is scored on
each split against the FP32 model the runs started from (PSNR-RGB, the report's border). Choose on
stress_val; stress and eval are for reporting.

    python benchmarks/qat_soup.py --runs runs/builtin_sr runs/builtin_sr_qat_seed1 ... \
        --out runs/builtin_sr_soup --threads 1

Needs `quantir data fetch samples --out data/samples --sets stress stress-val`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import ROOT, eval_fn

from quantir.export.runtime import load_runtime
from quantir.models.apply import run_uint8
from quantir.quant import checkpoint
from quantir.quant.soup import soup
from quantir.train.export_run import export_run, run_config

SPLITS = ("stress_val", "stress", "eval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="QAT run directories of one FP32 model")
    ap.add_argument("--soups", nargs="*", default=None,
                    help="subsets to average, as comma-separated indices into --runs (default: all runs)")
    ap.add_argument("--out", required=True, help="folder for the soups' checkpoints, artifacts and the JSON")
    ap.add_argument("--data", default=str(ROOT / "data" / "samples"))
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    subsets = [[int(i) for i in s.split(",")] for s in a.soups] if a.soups else [list(range(len(a.runs)))]
    cfg = run_config(Path(a.runs[0]))
    artifacts = {Path(r).name: Path(r) / "export" / "model_int8.tflite" for r in a.runs}
    for subset in subsets:
        name = "soup_" + "_".join(str(i) for i in subset)
        path = out / name / "qat_final.safetensors"
        if not (out / name / "export" / "parity.json").is_file():  # exported last: a finished soup
            _, record = soup([a.runs[i] for i in subset])
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save(record, path)
            parity = ROOT / cfg.data.eval_dir  # the run's paths are relative to the repository root
            export_run(path, out / name / "export", cfg.export, parity_dir=parity, parity_limit=4)
        parity = json.loads((out / name / "export" / "parity.json").read_text())
        print(f"{name}: parity {json.dumps(parity)[:200]}", flush=True)
        artifacts[name] = out / name / "export" / "model_int8.tflite"

    record = checkpoint.load(checkpoint.resolve(a.runs[0]))
    fp32 = checkpoint.build_float(record["float"])
    fp32.clamp_output = True
    info = fp32.info
    result = {"runs": a.runs, "soups": {f"soup_{'_'.join(map(str, s))}": [a.runs[i] for i in s] for s in subsets},
              "splits": {}}
    for split in a.splits:
        folder = Path(a.data) / split
        if not folder.is_dir():
            print(f"{split}: {folder} not found, skipped")
            continue
        pairs = info.eval_pairs(folder)
        ref = eval_fn(lambda im: run_uint8(fp32, im), pairs, info.border)["psnr_rgb"]
        rows = {"FP32": ref}
        print(f"\n{split} ({len(pairs)} photos, FP32 {ref:.3f} dB): INT8 TFLite - FP32, PSNR-RGB")
        for label, path in artifacts.items():
            rows[label] = eval_fn(load_runtime(path, threads=a.threads).run, pairs, info.border)["psnr_rgb"]
            print(f"  {label:32s} {rows[label] - ref:+.3f}", flush=True)
        result["splits"][split] = rows
    (out / "soup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{out / 'soup.json'}")


if __name__ == "__main__":
    main()
