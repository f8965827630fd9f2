"""Every exit's logits over a split, per-exit accuracy, and the eval report."""
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge_model.checkpoint import load_checkpoint, tokenizer_path, write_json
from edge_model.data import load_dataset
from edge_model.inputs import make_inputs


@torch.no_grad()
def collect_exits(model, inputs, batch_size: int = 256, progress: bool = False, device: str = "cpu") -> dict:
    """One pass over a split through every exit, in the segment API the export uses, on `device` (the
    model's; training evaluates on its GPU).

    Returns logits (N, exits, classes), first_pooled (N, width): the first exit's normalised pooled
    vector, and input_stats (N, 3): edge_runtime.core.features' input statistics. Text is batched by length
    (less padding), then put back in order.
    """
    from edge_runtime.core.features import image_stats, text_stats
    was_training = model.training
    model.eval()
    n = len(inputs)
    order = np.argsort([len(i) for i in inputs.ids], kind="stable") if hasattr(inputs, "ids") else np.arange(n)
    out = {}
    for s in tqdm(range(0, n, batch_size), desc="exits", disable=not progress, leave=False):
        idx = order[s:s + batch_size]
        x, mask, _ = inputs.batch(idx)
        on = (lambda t: t if t is None or device == "cpu" else t.to(device))   # noqa: E731
        bias, keep = model.attention_inputs(on(mask))
        h, logits, pooled = model.embed(on(x)), [], []
        for k in range(len(model.exits)):
            h = model.run_segment(h, k, bias)
            pooled.append(model.heads[k].features(h, keep))
            logits.append(model.heads[k].head(pooled[-1]))
        stats = image_stats(x.numpy()) if mask is None else text_stats(mask.numpy(), model.cfg.max_len)
        batch = {"logits": torch.stack(logits, 1).cpu().numpy(), "first_pooled": pooled[0].cpu().numpy(),
                 "input_stats": stats}
        for key, value in batch.items():
            out.setdefault(key, np.empty((n,) + value.shape[1:], np.float32))[idx] = value
    model.train(was_training)
    return out


def exit_accuracy(logits: np.ndarray, y: np.ndarray) -> list:
    return [float(a) for a in (logits.argmax(-1) == y[:, None]).mean(0)]


def evaluate(ckpt_dir, splits=("val", "test"), data_dir=None) -> dict:
    from edge_model.flops import model_flops
    model, config = load_checkpoint(ckpt_dir)
    data = load_dataset(config["task"]["dataset"], data_dir)
    pre, tok = config["task"]["preprocess"], tokenizer_path(ckpt_dir, config)
    result = {"checkpoint": str(ckpt_dir), "preset": config.get("preset"), "exits": list(model.exits),
              "flops": [model_flops(model, d) for d in model.exits], "accuracy": {}}
    for split in splits:
        inputs = make_inputs(data, split, pre, tok)
        result["accuracy"][split] = exit_accuracy(collect_exits(model, inputs, progress=True)["logits"],
                                                  inputs.y.numpy())
        result.setdefault("samples", {})[split] = len(inputs)
    return result


def eval_markdown(r: dict) -> str:
    splits = list(r["accuracy"])
    lines = [f"# Per-exit accuracy: {r['preset']}", "",
             "| exit (depth) | MFLOPs | " + " | ".join(f"{s} acc %" for s in splits) + " |",
             "|---|---|" + "---|" * len(splits)]
    for k, d in enumerate(r["exits"]):
        accs = " | ".join(f"{r['accuracy'][s][k] * 100:.2f}" for s in splits)
        lines.append(f"| {d} | {r['flops'][k] / 1e6:.2f} | {accs} |")
    return "\n".join(lines) + "\n"


def write_eval(r: dict, out_dir) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", r)
    (out / "eval.md").write_text(eval_markdown(r))
