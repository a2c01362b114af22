"""``quantir analyze RUN|CHECKPOINT --data DIR [--out DIR]``: where the INT8 error sits, per tensor."""

from __future__ import annotations

from pathlib import Path

from quantir.cli.args import int_range


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="per-tensor INT8 error of a QAT model in dB (SQNR, quantize-only cost, "
                                       "float-only gain), JSON + bar chart")
    p.add_argument("model", help="a run directory or a QAT checkpoint (qat_final.safetensors)")
    p.add_argument("--data", required=True, help="folder of clean target photos (inputs are synthesised as in eval)")
    p.add_argument("--out", help="output folder (default: RUN/analysis, or CHECKPOINT's folder/analysis)")
    p.add_argument("--crop", type=int_range(16, 4096), default=160,
                   help="centre crop of each input, in input pixels a side (default 160: the sweep runs the "
                        "model twice per tensor)")
    p.add_argument("--limit", type=int_range(1), help="only the first N photos")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradation (enhance)")
    p.add_argument("--top", type=int_range(1), default=10, help="rows printed (all are in the JSON)")
    p.add_argument("--threads", type=int_range(1, 256), default=2)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from quantir.evaluate.analyze import analyze, center_crops, format_analysis, load_for_analysis, write_analysis
    from quantir.utils import check_writable

    src = Path(args.model)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / "analysis"
    check_writable(out / "analysis.json")  # before the work, not after it
    torch.set_num_threads(args.threads)
    qmodel, fp32 = load_for_analysis(src)
    info = qmodel.info
    pairs = info.eval_pairs(args.data, limit=args.limit, seed=args.seed)
    crops = center_crops(list(pairs), args.crop, info.scale, info.size_multiple)
    result = analyze(qmodel, crops, fp32, progress=True)
    js, png = write_analysis(result, out)
    print(format_analysis(result, top=args.top))
    print(f"\n{js}\n{png}")
    return 0
