"""Argmax agreement of the engines with PyTorch on a whole split (fp32 acceptance: >= 99.9 % per variant).

Variant d is a prefix of the full chain and every segment returns its exit's logits, so one pass of the
full chain scores every variant. PyTorch's logits come from the checkpoint's exit cache (cache-exits).

    python benchmarks/agreement.py --checkpoint checkpoints/fmnist-vit --engine-dir engines/fmnist-vit
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--engine-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="fp32", help="fp32 (the exported files) or a build: opt, int8")
    p.add_argument("--out", default=None, help="JSON + Markdown here (default: <engine-dir>/agreement_<split>)")
    args = p.parse_args(argv)
    from tqdm import tqdm

    from edge_model.checkpoint import read_config, tokenizer_path
    from edge_model.data import load_dataset
    from edge_model.exits import load_exits
    from edge_model.inputs import make_inputs
    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir

    config = read_config(args.checkpoint)
    inputs = make_inputs(load_dataset(config["task"]["dataset"]), args.split, config["task"]["preprocess"],
                         tokenizer_path(args.checkpoint, config))
    torch_logits = load_exits(args.checkpoint, args.split)["logits"]           # (N, E, C)
    engine = EngineDir.open(args.engine_dir)
    graphs = engine.build("onnxruntime", args.precision).graphs
    agree = np.zeros(torch_logits.shape[:2], bool)
    correct = np.zeros(torch_logits.shape[:2], bool)
    max_len = config["task"]["preprocess"].get("max_len")
    with OrtExecutor(graphs, intra_op_num_threads=1) as ex:
        for s in tqdm(range(0, len(inputs), args.batch), desc="agreement", leave=False):
            idx = np.arange(s, min(s + args.batch, len(inputs)))
            x, mask, y = inputs.batch(idx)
            if mask is None:
                feed = {"pixels": x.numpy()}
            else:   # the engines run at the static max_len
                ids, m = np.zeros((len(idx), max_len), np.int64), np.zeros((len(idx), max_len), np.int64)
                ids[:, :x.shape[1]], m[:, :mask.shape[1]] = x.numpy(), mask.numpy()
                feed = {"input_ids": ids, "attention_mask": m}
            outs = ex.outputs(feed)
            for k, o in enumerate(outs):
                pred = o["logits"].argmax(-1)
                agree[idx, k] = pred == torch_logits[idx, k].argmax(-1)
                correct[idx, k] = pred == y.numpy()
    rows = [{"depth": int(v["depth"]), "argmax_agreement": float(agree[:, k].mean()),
             "engine_accuracy": float(correct[:, k].mean()),
             "torch_accuracy": float((torch_logits[:, k].argmax(-1) == inputs.y.numpy()).mean())}
            for k, v in enumerate(engine.variants)]
    report = {"engine_dir": args.engine_dir, "precision": args.precision, "split": args.split,
              "samples": len(inputs), "variants": rows}
    out = Path(args.out or Path(args.engine_dir) / f"agreement_{args.split}_{args.precision}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# Argmax agreement with PyTorch: {args.engine_dir} ({args.precision}, {args.split}, {len(inputs)} inputs)", "",
          "| depth | agreement % | engine acc % | PyTorch acc % |", "|---|---|---|---|"]
    md += [f"| {r['depth']} | {r['argmax_agreement'] * 100:.2f} | {r['engine_accuracy'] * 100:.2f} | "
           f"{r['torch_accuracy'] * 100:.2f} |" for r in rows]
    (out / "agreement.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
