"""Train (or resume) the built-in models, install them in src/quantir/assets, and measure them.

    python scripts/build_builtin_models.py            # make builtin

1. ``quantir train configs/builtin_sr_x3.yaml --out runs/builtin_sr`` and the same for
   ``configs/builtin_enhance.yaml`` (resumed if a run directory exists); for the x3 model the QAT
   stage runs again from the same FP32 model with seeds 1 and 2, and with sum-preserving weight
   rounding for seeds 0-2 (``runs/builtin_sr_qat_{seed,sp_seed}N``), and the run whose INT8 TFLite
   scores best on the stress photos' validation split is installed (QAT seeds differ by about
   0.01-0.04 dB on those photos; the ``stress`` split stays for reporting);
2. re-exports the chosen run's QAT checkpoint (``quantir export``, scales as learned, parity checked) and
   copies the INT8 TFLite + ONNX, parity report, model card, resolved config and QAT checkpoint into
   ``src/quantir/assets/{sr_x3,enhance}``;
3. evaluates the shipped TFLite files on the evaluation photos (SR vs bicubic, enhancement vs the
   degraded input), times the torch-free CLI start-up and upscales a 6000x4000 photo, writing
   ``src/quantir/assets/builtin_results.json`` (read by benchmarks/report.py for BENCHMARKS.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from quantir.data.task import ModelInfo, Task
from quantir.evaluate.evaluate import evaluate, format_table
from quantir.export.runtime import load_runtime
from quantir.infer import Processor, builtin_model

ROOT = Path(__file__).resolve().parents[1]  # quantir itself comes from the installed package (make venv)

ASSETS = ROOT / "src" / "quantir" / "assets"
BUILDS = {"sr_x3": ("configs/builtin_sr_x3.yaml", "runs/builtin_sr"),
          "enhance": ("configs/builtin_enhance.yaml", "runs/builtin_enhance")}
# QAT candidates (seed, weight rounding); the first is the main run's own QAT stage (the config's rule)
QAT_CANDIDATES = {"sr_x3": [(0, "nearest"), (1, "nearest"), (2, "nearest"),
                            (0, "sum_preserving"), (1, "sum_preserving"), (2, "sum_preserving")],
                  "enhance": [(0, "nearest")]}
EVAL = ROOT / "data" / "samples" / "eval"
SELECT = ROOT / "data" / "samples" / "stress_val"  # chooses among QAT seeds; never reported as a result
QAT_ONLY = ["--set", "teacher.enabled=false", "--set", "stage1.enabled=false", "--set", "stage2.enabled=false"]
QUANTIR = [sys.executable, "-m", "quantir"]


def train(config: str, run_dir: str) -> None:
    if (ROOT / run_dir / "results.json").is_file():  # finished
        return
    cmd = QUANTIR + ["train", config, "--out", run_dir, "--quiet"]
    if (ROOT / run_dir / "config.yaml").is_file():  # an earlier attempt: continue from its checkpoints
        cmd.append("--resume")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def candidate_dir(run_dir: str, seed: int, rounding: str) -> str:
    return f"{run_dir}_qat_{'sp_' if rounding == 'sum_preserving' else ''}seed{seed}"


def best_qat_run(name: str, config: str, run_dir: str) -> tuple[str, dict[str, float]]:
    """QAT again from ``run_dir``'s FP32 model for every further candidate; the run directory whose
    INT8 TFLite has the best PSNR-RGB on the selection photos, and every candidate's score."""
    candidates = QAT_CANDIDATES[name]
    if len(candidates) == 1 or not SELECT.is_dir():
        if len(candidates) > 1:
            print(f"{SELECT} missing (quantir data fetch samples --sets stress-val): installing the main run unselected")
        return run_dir, {}
    runs = {run_dir: run_dir}
    for seed, rounding in candidates[1:]:
        out = candidate_dir(run_dir, seed, rounding)
        runs[out] = out
        if (ROOT / out / "results.json").is_file():
            continue
        cmd = QUANTIR + ["train", config, "--init", f"{run_dir}/checkpoints/deploy_fp32.safetensors", *QAT_ONLY,
                         "--set", f"seed={seed}", "--set", f"qat.quant.weight_rounding={rounding}", "--out", out,
                         "--quiet"]
        if (ROOT / out / "config.yaml").is_file():
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    info = ModelInfo(Task.SR, scale=3)
    pairs = info.eval_pairs(SELECT)
    scores = {out: evaluate(load_runtime(ROOT / out / "export" / "model_int8.tflite").run, pairs,
                            info.border)["psnr_rgb"] for out in runs}
    best = max(scores, key=scores.get)
    print(f"{name}: {best} chosen on {SELECT.name} (PSNR-RGB " +
          ", ".join(f"{Path(k).name} {v:.3f}" for k, v in scores.items()) + ")", flush=True)
    return best, scores


def slim_checkpoint(src: Path, dst: Path) -> None:
    """The torch backend needs the QAT graph only: drop the FP32 reference (half the size)."""
    from quantir.quant import checkpoint

    record = checkpoint.load(src)
    record.pop("float", None)
    checkpoint.save(record, dst)


def install(name: str, config: str, run_dir: str, fp32_run: str | None = None) -> None:
    """Re-export the run's QAT checkpoint with the current code (parity checked) and copy it in
    (``fp32_run``: where the FP32 model came from, for a QAT-only candidate run)."""
    src, dst = ROOT / run_dir, ASSETS / name
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(QUANTIR + ["export", run_dir, "--out", f"{run_dir}/export",
                              "--parity-data", str(EVAL.relative_to(ROOT))],
                   check=True, cwd=ROOT)
    for f in ("model_int8.tflite", "model_int8.onnx", "parity.json"):
        shutil.copy2(src / "export" / f, dst / f)
    shutil.copy2(src / "config.yaml", dst / "config.yaml")
    slim_checkpoint(src / "checkpoints" / "qat_final.safetensors", dst / "qat_final.safetensors")
    card = (src / "export" / "model_card.md").read_text()
    how = f"quantir train {config} --out {fp32_run or run_dir}"
    if fp32_run:  # the QAT-only command exactly as the candidate ran (its resolved config holds the rest)
        seed, rounding = next(c for c in QAT_CANDIDATES[name] if candidate_dir(fp32_run, *c) == run_dir)
        how += (f"\nquantir train {config} --init {fp32_run}/checkpoints/deploy_fp32.safetensors "
                f"{' '.join(QAT_ONLY)} --set seed={seed} --set qat.quant.weight_rounding={rounding} --out {run_dir}")
    card += (f"\n## How this built-in model was made\n\nTrained by quantir's own pipeline on the sample photos "
             f"(training split only):\n\n```\nquantir data fetch samples --out data/samples --sets train train-ext "
             f"eval stress-val\n{how}\n```\n\n(or `make builtin`, which runs scripts/build_builtin_models.py and "
             f"keeps the QAT run (seed, weight rounding) that scores best on the stress_val photos). Resolved "
             f"config: config.yaml next to this card.\n")
    (dst / "model_card.md").write_text(card)


def measure() -> dict:
    rows_sr, rows_en = {}, {}
    info_sr, info_en = ModelInfo(Task.SR, scale=3), ModelInfo(Task.ENHANCE)
    sr = info_sr.eval_pairs(EVAL)
    rows_sr["bicubic"] = evaluate(info_sr.baseline(), sr, info_sr.border)
    rows_sr["built-in x3 (INT8 TFLite)"] = evaluate(load_runtime(ASSETS / "sr_x3" / "model_int8.tflite").run, sr,
                                                    info_sr.border)
    en = info_en.eval_pairs(EVAL, seed=0)
    rows_en["degraded input"] = evaluate(info_en.baseline(), en, info_en.border)
    rows_en["built-in enhancer (INT8 TFLite)"] = evaluate(
        load_runtime(ASSETS / "enhance" / "model_int8.tflite").run, en, info_en.border)
    strip = lambda rows: {k: {m: v for m, v in r.items() if m != "per_image"} for k, r in rows.items()}
    return {"sr": strip(rows_sr), "enhance": strip(rows_en)}


# One CLI call in a fresh interpreter: its time inside Python, whether torch got imported, and its own
# peak RSS from /proc/self/status VmHWM (ru_maxrss of children would carry over this process's peak
# through fork + exec on Linux, as benchmarks/photo_path.py found: 1.9 GB reported for 0.47 GB).
CLI_PROBE = """
import sys, time
t0 = time.perf_counter()
from quantir.cli import main
from quantir.utils import peak_rss_kb
main(sys.argv[1:])
print(time.perf_counter() - t0, "torch" in sys.modules, peak_rss_kb())
"""


def run_cli(args: list[str]) -> tuple[float, float, bool, float]:
    """(wall s, in-process s, torch imported, peak RSS MB) of ``quantir ARGS`` in a fresh interpreter."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CLI_PROBE, *args], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    wall = time.perf_counter() - t0
    in_process, torch_loaded, hwm_kb = out.stdout.strip().splitlines()[-1].split()  # after the CLI's own output
    return wall, float(in_process), torch_loaded == "True", int(hwm_kb) / 1024


def startup_and_large_photo(tmp: Path) -> dict:
    from PIL import Image

    tmp.mkdir(parents=True, exist_ok=True)
    small = tmp / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(small)
    wall, in_process, torch_loaded, _ = run_cli(["upscale", str(small), "-o", str(tmp / "small_x3.png"),
                                                 "--overwrite", "--quiet"])
    # 24-megapixel photo: tiles keep memory bounded
    big = tmp / "big.jpg"
    y, x = np.mgrid[0:4000, 0:6000]
    img = np.stack([(x * 7 + y * 3) % 256, (x ^ y) % 256, (x * y // 97) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(big, quality=90)
    del img
    big_s, _, _, peak_mb = run_cli(["upscale", str(big), "-o", str(tmp / "big_x3.png"), "--overwrite", "--quiet"])
    with Image.open(tmp / "big_x3.png") as im:
        size = im.size
    tile = Processor(builtin_model("sr"), "sr", 3, threads=2).tile  # the CLI's default tiles for 2 threads
    return {"cli_wall_s": wall, "in_process_s": in_process, "torch_imported": torch_loaded,
            "big_photo": "6000x4000 JPEG", "big_output": list(size), "big_seconds": big_s, "big_peak_rss_mb": peak_mb,
            "big_tile": list(tile)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure-only", action="store_true", help="skip training and installing; re-measure the assets")
    ap.add_argument("--only", nargs="+", choices=sorted(BUILDS), default=sorted(BUILDS),
                    help="train and install only these models (all of them are measured)")
    args = ap.parse_args()
    selection = {}
    for name, (config, run_dir) in BUILDS.items():
        if not args.measure_only and name in args.only:
            train(config, run_dir)
            chosen, scores = best_qat_run(name, config, run_dir)
            selection[name] = {"run": chosen, "stress_val_psnr_rgb": scores}
            install(name, config, chosen, fp32_run=run_dir if chosen != run_dir else None)
    res = measure()
    perf = startup_and_large_photo(ROOT / "runs" / "builtin_check")
    table = ["x3 super-resolution, 16 evaluation photos:", "", format_table(res["sr"], baseline="bicubic"), "",
             "Enhancement, the same photos with the synthetic phone degradation (seed 0):", "",
             format_table(res["enhance"], baseline="degraded input"), "",
             f"Inference-only start-up: `quantir upscale` of a 64x64 PNG takes {perf['cli_wall_s']:.2f} s wall "
             f"({perf['in_process_s']:.2f} s inside Python); torch imported: {perf['torch_imported']}. "
             f"A 6000x4000 JPEG upscales to {perf['big_output'][0]}x{perf['big_output'][1]} in "
             f"{perf['big_seconds']:.0f} s with {perf['big_peak_rss_mb']:.0f} MB peak memory (2 threads, the default "
             f"tiles of {perf['big_tile'][0]}x{perf['big_tile'][1]})."]
    command = "python scripts/build_builtin_models.py" + (" --measure-only" if args.measure_only else "")
    if not args.measure_only and sorted(args.only) != sorted(BUILDS):
        command += " --only " + " ".join(args.only)
    result = {"command": command + "  (make builtin trains, installs and measures)", "table": table, **res,
              "perf": perf}
    previous = ASSETS / "builtin_results.json"
    if not selection and previous.is_file():  # --measure-only: the installed models' selection still holds
        selection = json.loads(previous.read_text()).get("qat_selection", {})
    if selection:
        result["qat_selection"] = selection
    (ASSETS / "builtin_results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
