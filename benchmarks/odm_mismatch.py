"""The mismatch ODM targets, measured on trained QAT models: how far each quantized activation sits
from its quantization grid, without ODM (row a) and with it (row e), per layer (issue 17).

For every activation fake quantizer of a QAT checkpoint, over LR crops of the evaluation photos:
the relative mismatch ||X - q(X)||_2 / ||X||_2 (what ODM's regulariser L_M shrinks, normalised so
layers compare) and the share of values clipped at the range ends (|X - q(X)| > scale / 2). Mean
over images and over the seeds of each row; a bar chart per layer and a JSON.

    python benchmarks/odm_mismatch.py --runs runs/odm_protocol/w2/8bit --rows a e --out runs/odm_protocol/mismatch_w2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from quantir.data.io import list_images
from quantir.quant import checkpoint
from quantir.quant.fake_quant import ActFakeQuantize


def lr_crops(folder: Path, scale: int, size: int) -> list[torch.Tensor]:
    """Centre crops of size x size LR pixels: HR crops reduced by ``scale`` (Pillow's antialiased bicubic)."""
    out = []
    for path in list_images(folder):
        im = Image.open(path).convert("RGB")
        side = size * scale
        left, top = max(0, (im.width - side) // 2), max(0, (im.height - side) // 2)
        hr = im.crop((left, top, left + side, top + side))
        lr = np.asarray(hr.resize((size, size), Image.BICUBIC, reducing_gap=None), np.float32)
        out.append(torch.from_numpy(lr.copy()).permute(2, 0, 1)[None])
    return out


def layer_mismatch(ckpt: Path, images: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per activation quantizer (in graph order): mean relative mismatch and clipped share."""
    qmodel = checkpoint.build_qat(checkpoint.load(ckpt))
    stats: dict[str, list[tuple[float, float]]] = {}

    def hook(name):
        def record(mod, args, out):
            x, q = args[0].detach().double(), out.detach().double()
            d = (x - q).abs()
            rel = float(torch.linalg.vector_norm(x - q) / torch.linalg.vector_norm(x).clamp_min(1e-12))
            clipped = float((d > float(mod.scale) / 2 + 1e-9).double().mean())
            stats.setdefault(name, []).append((rel, clipped))
        return record

    gm = qmodel.graph_module
    order = [n.target for n in gm.graph.nodes if n.op == "call_module"
             and isinstance(gm.get_submodule(n.target), ActFakeQuantize)]
    handles = [gm.get_submodule(t).register_forward_hook(hook(t)) for t in order]
    with torch.no_grad():
        for x in images:
            qmodel(x)
    for h in handles:
        h.remove()
    return {k: {"rel_mismatch": float(np.mean([s[0] for s in stats[k]])),
                "clipped": float(np.mean([s[1] for s in stats[k]]))} for k in order if k in stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder of odm_protocol runs (<row>_s<seed>)")
    ap.add_argument("--rows", nargs="+", default=["a", "e"])
    ap.add_argument("--photos", type=Path, default=Path("data/samples/eval"))
    ap.add_argument("--size", type=int, default=96, help="LR crop side")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    images = lr_crops(a.photos, 3, a.size)
    result = {}
    for row in a.rows:
        runs = sorted(a.runs.glob(f"{row}_s*"))
        done = [d for d in runs if (d / "checkpoints" / "qat_final.safetensors").is_file()]
        if len(done) < len(runs):  # a seed still training (or failed): measured without it, and said so
            print(f"({row}): skipping unfinished {', '.join(d.name for d in runs if d not in done)}", file=sys.stderr)
        if not done:
            raise SystemExit(f"({row}): no finished run under {a.runs}")
        per_seed = [layer_mismatch(d / "checkpoints" / "qat_final.safetensors", images) for d in done]
        layers = list(per_seed[0])
        result[row] = {"seeds": len(per_seed), "layers": {
            k: {m: float(np.mean([s[k][m] for s in per_seed])) for m in ("rel_mismatch", "clipped")} for k in layers}}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "mismatch.json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(result[a.rows[0]]["layers"])
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(layers)), 6), sharex=True)
    width = 0.8 / len(a.rows)
    for k, row in enumerate(a.rows):
        vals = result[row]["layers"]
        xs = np.arange(len(layers)) + k * width
        axes[0].bar(xs, [vals[n]["rel_mismatch"] for n in layers], width, label=f"({row}), {result[row]['seeds']} seed{'s' * (result[row]['seeds'] != 1)}")
        axes[1].bar(xs, [100 * vals[n]["clipped"] for n in layers], width)
    axes[0].set_ylabel("||X - q(X)|| / ||X||")
    axes[1].set_ylabel("% clipped")
    axes[1].set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
    axes[1].set_xticklabels([f"q{i}" for i in range(len(layers))], fontsize=7)
    axes[1].set_xlabel("activation quantizer, in graph order (input first, output last)")
    axes[0].set_ylim(0, 1.25)  # headroom: the legend sits above the bars, in one row
    axes[0].legend(fontsize=8, ncol=len(a.rows), loc="upper center")
    where = "/".join(a.runs.parts[-3:])  # net / bits / layout: the whole path does not fit the figure
    axes[0].set_title(f"{where}: mismatch per quantized activation", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out / "mismatch.png", dpi=110)
    for row in a.rows:
        vals = list(result[row]["layers"].values())
        print(f"({row}): mean relative mismatch {np.mean([v['rel_mismatch'] for v in vals]):.4f}, "
              f"mean clipped {100 * np.mean([v['clipped'] for v in vals]):.3f} % over {len(vals)} quantizers")


if __name__ == "__main__":
    main()
