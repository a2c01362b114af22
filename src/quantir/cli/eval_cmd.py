"""``quantir eval MODEL --data DIR --task sr --scale 3 [--json OUT]``."""

from __future__ import annotations

from quantir.cli.args import int_range


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM of a model (or the bicubic/input baseline) on a photo folder")
    p.add_argument("model", help="'bicubic' (SR), 'input' (enhance), a .tflite/.onnx file, a checkpoint or a run dir")
    p.add_argument("--data", required=True, help="folder of clean target photos (inputs are synthesised)")
    p.add_argument("--inputs", help="folder of real inputs matched to --data by file name (LR or phone photos)")
    p.add_argument("--task", choices=["sr", "enhance"], default="sr")
    p.add_argument("--scale", type=int_range(2, 4), default=3, help="SR factor, 2..4 (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradation (enhance)")
    p.add_argument("--limit", type=int_range(1), help="only the first N photos")
    p.add_argument("--tile", type=int_range(0, 16384), default=0,
                   help="run in tiles of N input pixels (0: whole image; else at least 72)")
    p.add_argument("--threads", type=int_range(1, 256), default=2)
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=run)


def run(args) -> int:
    from quantir.evaluate.evaluate import evaluate, format_table, write_json
    from quantir.evaluate.predictors import load_predictor
    from quantir.utils import check_writable

    if args.json:
        check_writable(args.json)  # before the work, not after it

    predictor = load_predictor(args.model, task=args.task, scale=args.scale, tile=args.tile, threads=args.threads)
    info = predictor.info
    pairs = info.eval_pairs(args.data, args.inputs, limit=args.limit, seed=args.seed)
    result = evaluate(predictor.predict, pairs, border=info.border, progress=True, desc=predictor.name)
    print(format_table({predictor.name: result}))
    print(f"({result['n_images']} images, {info.title})")
    if args.json:
        out = {k: result[k] for k in ("psnr_rgb", "psnr_y", "ssim_y", "ssim_rgb", "n_images")}
        out.update(model=args.model, task=info.task.value, scale=info.scale, per_image=result["per_image"])
        write_json(out, args.json)
    return 0
