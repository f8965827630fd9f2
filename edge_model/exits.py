"""Exit cache, oracle depth and the lower bound on mean FLOPs.

The cache holds every exit's logits per split (exits_<split>.npz), computed once, so the controller and
every baseline sweep on arrays without re-running the backbone.

Oracle depth l*(x): the shallowest exit whose prediction is correct. An input that no exit gets right
gains nothing from depth, so the oracle stops it at the first exit.
Stable depth: the shallowest exit that is correct and agrees with every deeper exit. It is a more
conservative label for the complexity predictor; the lower bound always uses l*, so it stays a true bound.

Lower bound: to be right on m inputs, pay l*'s FLOPs for the m solvable inputs whose correct exit is
cheapest and the first exit's FLOPs for all the rest. No per-input choice of depth spends less at
accuracy m / N.
"""
from pathlib import Path

import numpy as np

from edge_model.checkpoint import load_checkpoint, tokenizer_path, write_json
from edge_model.data import load_dataset
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import atomic_path


def oracle_depths(correct: np.ndarray) -> np.ndarray:
    """(N,) exit index of l*: the first correct exit, or 0 for inputs no exit gets right."""
    return np.where(correct.any(1), correct.argmax(1), 0)


def stable_depths(preds: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(N,) the first exit k that is correct and whose prediction every deeper exit repeats (0 if none)."""
    agree_after = np.flip(np.cumprod(np.flip(preds == preds[:, -1:], 1), 1), 1).astype(bool)  # k..E-1 agree with last
    ok = correct & agree_after & correct[:, -1:]
    return np.where(ok.any(1), ok.argmax(1), 0)


def lower_bound_curve(correct: np.ndarray, flops: np.ndarray) -> tuple:
    """(accuracy levels (m / N for m = 0..solvable), least mean FLOPs at each level)."""
    n = len(correct)
    solvable = correct.any(1)
    extra = np.sort(flops[oracle_depths(correct)[solvable]] - flops[0])   # cost above the first exit
    mean_flops = (flops[0] * n + np.concatenate([[0.0], np.cumsum(extra)])) / n
    return np.arange(len(extra) + 1) / n, mean_flops


def thin(curve: np.ndarray, points: int = 200) -> np.ndarray:
    """About `points` evenly spaced samples of a curve, always keeping its last point."""
    idx = np.unique(np.linspace(0, len(curve) - 1, min(points, len(curve))).round().astype(int))
    return curve[idx]


def oracle_report(logits: np.ndarray, y: np.ndarray, flops, exits) -> dict:
    """Per-exit accuracy, oracle accuracy and FLOPs, and the lower bound at full-depth accuracy."""
    flops = np.asarray(flops, np.float64)
    preds = logits.argmax(-1)
    correct = preds == y[:, None]
    n = len(y)
    l_star, stable = oracle_depths(correct), stable_depths(preds, correct)
    levels, curve = lower_bound_curve(correct, flops)
    m_full = int(correct[:, -1].sum())
    at_full = float(curve[min(m_full, len(curve) - 1)])
    return {
        "samples": n, "exits": list(exits), "flops": flops.tolist(),
        "exit_accuracy": correct.mean(0).tolist(),
        "oracle_accuracy": float(correct.any(1).mean()),
        "oracle_mean_flops": float(flops[l_star].mean()),
        "oracle_depth_histogram": np.bincount(l_star, minlength=len(exits)).tolist(),
        "stable_depth_histogram": np.bincount(stable, minlength=len(exits)).tolist(),
        "full_depth_accuracy": m_full / n,
        "lower_bound_at_full_accuracy": {"mean_flops": at_full, "fraction_of_full": at_full / flops[-1],
                                         "flops_reduction": 1.0 - at_full / flops[-1]},
        "lower_bound_curve": {"accuracy": thin(levels).tolist(), "mean_flops": thin(curve).tolist()},
        "predictor_label": "stable",
    }


def cache_path(ckpt_dir, split: str) -> Path:
    return Path(ckpt_dir) / f"exits_{split}.npz"


CACHE_KEYS = ("logits", "labels", "exits", "flops", "first_pooled", "input_stats")


def save_exits(path: Path, collected: dict, y: np.ndarray, exits, flops) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a file object: np.savez names it as given
        np.savez_compressed(f, labels=y, exits=np.asarray(exits), flops=np.asarray(flops, np.float64), **collected)


def load_exits(ckpt_dir, split: str) -> dict:
    path = cache_path(ckpt_dir, split)
    if not path.is_file():
        raise EdgeError(f"{path} | no exit cache; make it with: edge-model cache-exits --checkpoint {ckpt_dir}",
                        Exit.NOT_FOUND)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in CACHE_KEYS}
    except (OSError, ValueError, KeyError) as err:
        raise EdgeError(f"{path} | corrupt exit cache ({err})", Exit.CORRUPT) from None


def cache_exits(ckpt_dir, data_dir=None, out_dir=None, splits=("train", "val", "test")) -> dict:
    """Cache every split's exits next to the checkpoint (or in out_dir); report the oracle per split."""
    from edge_model.evaluate import collect_exits
    from edge_model.flops import model_flops
    from edge_model.inputs import make_inputs
    model, config = load_checkpoint(ckpt_dir)
    data = load_dataset(config["task"]["dataset"], data_dir)
    pre, tok = config["task"]["preprocess"], tokenizer_path(ckpt_dir, config)
    out = Path(out_dir or ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    flops = [model_flops(model, d) for d in model.exits]
    report = {"checkpoint": str(ckpt_dir), "preset": config.get("preset"), "splits": {}}
    for split in splits:
        inputs = make_inputs(data, split, pre, tok)
        collected, y = collect_exits(model, inputs, progress=True), inputs.y.numpy()
        save_exits(cache_path(out, split), collected, y, model.exits, flops)
        report["splits"][split] = oracle_report(collected["logits"], y, flops, model.exits)
    write_json(out / "oracle.json", report)
    (out / "oracle.md").write_text(oracle_markdown(report))
    return report


def oracle_markdown(report: dict) -> str:
    lines = [f"# Oracle and lower bound: {report['preset']}", "",
             "FLOPs of text models are for max_len tokens. Lower bound: least mean FLOPs of any per-input depth "
             "choice at the full-depth accuracy (oracle depth l* = shallowest correct exit).", "",
             "| split | N | full-depth acc % | oracle acc % | oracle MFLOPs | lower bound MFLOPs at full acc "
             "| lower-bound FLOPs cut % | full MFLOPs |", "|---|---|---|---|---|---|---|---|"]
    for split, r in report["splits"].items():
        lb = r["lower_bound_at_full_accuracy"]
        lines.append(f"| {split} | {r['samples']} | {r['full_depth_accuracy'] * 100:.2f} | "
                     f"{r['oracle_accuracy'] * 100:.2f} | {r['oracle_mean_flops'] / 1e6:.2f} | "
                     f"{lb['mean_flops'] / 1e6:.2f} | {lb['flops_reduction'] * 100:.1f} | {r['flops'][-1] / 1e6:.2f} |")
    lines += ["", "| exit depth | MFLOPs | " + " | ".join(f"{s} acc %" for s in report["splits"]) +
              " | test l* count | test stable count |", "|---|---|" + "---|" * len(report["splits"]) + "---|---|"]
    first = next(iter(report["splits"].values()))
    test = report["splits"].get("test", first)
    for k, d in enumerate(first["exits"]):
        accs = " | ".join(f"{r['exit_accuracy'][k] * 100:.2f}" for r in report["splits"].values())
        lines.append(f"| {d} | {first['flops'][k] / 1e6:.2f} | {accs} | {test['oracle_depth_histogram'][k]} | "
                     f"{test['stable_depth_histogram'][k]} |")
    return "\n".join(lines) + "\n"
