"""``quantir eval MODEL --data DIR --task sr --scale 3 [--json OUT]``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM of a model (or the bicubic/input baseline) on a photo folder")
    p.add_argument("model", help="'bicubic' (SR), 'input' (enhance), a .tflite/.onnx file, a checkpoint or a run dir")
    p.add_argument("--data", required=True, help="folder of clean target photos (inputs are synthesised)")
    p.add_argument("--inputs", help="folder of real inputs matched to --data by file name (LR or phone photos)")
    p.add_argument("--task", choices=["sr", "enhance"], default="sr")
    p.add_argument("--scale", type=int, default=3, help="SR factor (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradation (enhance)")
    p.add_argument("--limit", type=int, help="only the first N photos")
    p.add_argument("--tile", type=int, default=0, help="run in tiles of N input pixels (0: whole image)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=run)


def run(args) -> int:
    from quantir.data.datasets import enhance_pairs, folder_pairs, sr_pairs
    from quantir.evaluate.evaluate import evaluate, format_table, write_json
    from quantir.evaluate.predictors import load_predictor

    scale = args.scale if args.task == "sr" else 1
    predictor = load_predictor(args.model, task=args.task, scale=scale, tile=args.tile, threads=args.threads)
    if args.inputs:
        pairs = folder_pairs(args.inputs, args.data, scale=scale, limit=args.limit)
    elif args.task == "sr":
        pairs = sr_pairs(args.data, scale, limit=args.limit)
    else:
        pairs = enhance_pairs(args.data, seed=args.seed, limit=args.limit)
    result = evaluate(predictor.predict, pairs, border=scale if args.task == "sr" else 0, progress=True,
                      desc=predictor.name)
    print(format_table({predictor.name: result}))
    print(f"({result['n_images']} images, task {args.task}" + (f", x{scale}" if args.task == "sr" else "") + ")")
    if args.json:
        out = {k: result[k] for k in ("psnr_rgb", "psnr_y", "ssim_y", "ssim_rgb", "n_images")}
        out.update(model=args.model, task=args.task, scale=scale, per_image=result["per_image"])
        write_json(out, args.json)
    return 0
