"""``quantir data fetch samples --out DIR``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="fetch the built-in sample photos")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = dsub.add_parser("fetch", help="download and verify a dataset")
    f.add_argument("dataset", choices=["samples"], help="'samples': Debian wallpapers (train, stress) + PyPI photos (eval)")
    f.add_argument("--out", required=True, help="folder that receives train/ and eval/")
    f.add_argument("--sets", nargs="+", default=["train", "eval", "stress"], metavar="SET",
                   help="any of train, train-ext, eval, stress-val, stress (default: train eval stress; "
                        "stress = hard photos reported next to eval, stress-val = their model-selection split)")
    f.set_defaults(func=run_fetch)


def run_fetch(args) -> int:
    from quantir.data.samples import fetch_samples

    written = fetch_samples(args.out, tuple(args.sets), progress=lambda msg: print(msg, flush=True))
    total = sum(len(v) for v in written.values())
    print(f"{total} photos ready in {args.out}")
    return 0
