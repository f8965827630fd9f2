"""`edge-model export`: a checkpoint and its fitted controller -> an engine directory for the device.

engines/<name>/ holds (every path in the manifest relative to it, every file hashed):
  segment_K.onnx     the folded segments, ONNX opset 17, self-contained (edge_model.export): every exit
                     head and the controller's inputs (progressive mode, and oneshot's segment 0)
  chain_J_K.onnx     segments J..K (J = 0 or 1) with exit K's head only: fixed:D, full, and the rest of a
                     oneshot chain, at the cost of the plain depth-K model
  reference/full.onnx  the unfolded model as one plain graph: bench's baseline, not needed on the device
  predictor.onnx     the complexity predictor (LightGBM as one tree node)
  predictor_trees.npz  its trees as the device walks them (edge_runtime.core.predictor.TreeEnsemble)
  policy.onnx        the LSTM policy step; policy.npz: the same weights for the numpy step
  projection.npz     the controller's feature projection, re-expressed for the folded graphs (below)
  tokenizer.json     text models only
  reference.npz      16 test inputs and the PyTorch (unfolded checkpoint) logits of every exit,
                     and the controller features: what `edge-infer check` compares against
  manifest.json      schema edge-engines (version in edge_runtime.core.manifest, which documents every field)

The projection. The predictor's PCA projection P was fitted on the first exit's pooled vector after
its LayerNorm affine (evaluate.collect_exits caches gamma * n + beta). Folding moves that affine into the
exit's classifier, so the device can compute only n = layer_norm(mean over tokens of segment 0's
hidden_out) without affine. Since (gamma * n + beta) @ P = n @ (diag(gamma) P) + beta @ P, we ship
weight = diag(gamma) P and bias = beta P: the device's features equal the ones the predictor was fitted
on, and exit 0 keeps its fold. The export checks this on the reference batch.

Everything is written to a temporary directory next to the output, opened with the device-side loader
(hashes, schema, build stamp), and only then renamed into place.
"""
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from edge_model.checkpoint import load_checkpoint, tokenizer_path, write_json
from edge_model.export import OPSET, export_chains, export_plain, export_segments, input_names, sha256
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import atomic_dir
from edge_runtime.core.manifest import MANIFEST, SCHEMA, SCHEMA_VERSION
from edge_runtime.core.onnx_files import ort_reads

REFERENCE_SAMPLES = 16
BASELINE = "reference/full.onnx"   # the plain graph bench compares against; deploy leaves reference/ behind
PROJECTION_ATOL = 1e-4     # segment 0's controller features vs the workstation's on the reference batch
CONTROLLER_FILES = {"predictor": "predictor.onnx", "policy": "policy.onnx", "policy_arrays": "policy.npz"}
PREDICTOR_TREES = "predictor_trees.npz"   # predictor.onnx's trees laid out for the device's C walk
INPUT_STATS = {
    "image": {"names": ["mean", "std", "edge_energy"], "function": "edge_runtime.core.features.image_stats",
              "of": "the preprocessed input (N, C, H, W)"},
    "text": {"names": ["token_fraction", "zero", "zero"], "function": "edge_runtime.core.features.text_stats",
             "of": "the attention mask (N, max_len): token count / max_len"},
}


def controller_dir(ckpt_dir: Path) -> Path:
    """The fitted controller, checked for every file the engine directory ships."""
    ctrl = ckpt_dir / "controller"
    for name in list(CONTROLLER_FILES.values()) + ["predictor.npz", "predictor.json"]:
        if not (ctrl / name).is_file():
            raise EdgeError(f"{ctrl / name} | missing; fit the controller first: edge-model fit-controller "
                            f"--checkpoint {ckpt_dir}", Exit.NOT_FOUND)
    return ctrl


def reference_inputs(config: dict, ckpt_dir: Path, data_dir, n: int) -> tuple:
    """(x, mask or None, labels) for the first n test inputs, preprocessed as the device will feed them."""
    from edge_model.data import load_dataset
    from edge_model.inputs import make_inputs
    task = config["task"]
    data = load_dataset(task["dataset"], data_dir)
    inputs = make_inputs(data, "test", task["preprocess"], tokenizer_path(ckpt_dir, config))
    idx = np.arange(min(n, len(inputs)))
    x, mask, y = inputs.batch(idx)
    if mask is not None:   # the graphs are static at max_len tokens: pad every row to it
        T = task["preprocess"]["max_len"]
        ids, m = torch.zeros(len(idx), T, dtype=torch.int64), torch.zeros(len(idx), T, dtype=torch.int64)
        ids[:, :x.shape[1]], m[:, :x.shape[1]] = x, mask
        x, mask = ids, m
    return x, mask, y


@torch.no_grad()
def reference_outputs(model, x, mask, projection: np.ndarray, task: dict) -> tuple:
    """(logits (N, exits, classes), features (N, 6 + P)) of the unfolded model, the features as the
    workstation computes them for the predictor: what the device must reproduce."""
    from edge_runtime.core.features import confidence, controller_features, image_stats, text_stats
    logits = torch.stack(model.forward_exits(x, mask), 1).numpy()        # (N, E, classes)
    bias, keep = model.attention_inputs(mask)
    h = model.run_segment(model.embed(x), 0, bias)                       # (N, T, C)
    pooled = model.heads[0].features(h, keep).numpy()                    # (N, C), after the affine
    stats = image_stats(x.numpy()) if mask is None else text_stats(mask.numpy(), task["preprocess"]["max_len"])
    return logits, controller_features(stats, confidence(logits[:, 0]), pooled @ projection)


def segment_flops(model) -> list:
    """FLOPs each segment graph runs: its blocks and its exit head (segment 0 also the stem)."""
    from edge_model.flops import model_flops
    heads = [2 * h.head.in_features * h.head.out_features for h in model.heads]
    total = [model_flops(model, d) for d in model.exits]    # stem + blocks 1..d + one head
    return [total[0]] + [total[k] - total[k - 1] + heads[k] for k in range(1, len(total))]


def git_state() -> tuple:
    """(commit, dirty) of the code doing the export; (None, None) outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def check_out_dir(out: Path) -> None:
    """Refuse to replace anything but an engine directory (or nothing, or an empty directory)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise EdgeError(f"{out} | exists and is not an engine directory (no {MANIFEST}); choose another --out",
                        Exit.BAD_INPUT)


def ref(path: Path) -> dict:
    return {"file": path.name, "sha256": sha256(path)}


def write_engines(tmp: Path, ckpt: Path, model, config: dict, data_dir, samples: int, opset: int,
                  name: str, progress: bool) -> dict:
    """Every file of the engine directory into `tmp`; returns the manifest."""
    import onnx
    import onnxruntime

    from edge_model.controller.fit import calibration, operating_points
    from edge_model.exits import load_exits
    from edge_model.flops import model_flops
    from edge_model.fold import fold_model
    from edge_runtime.core.engine_dir import Projection
    say = print if progress else (lambda *a, **k: None)
    task, text = config["task"], config["task"]["kind"] == "text"
    ctrl = controller_dir(ckpt)
    val = load_exits(ckpt, "val")
    exits = [int(e) for e in model.exits]
    if list(val["exits"]) != exits or val["logits"].shape[1] != len(exits):
        raise EdgeError(f"{ckpt}/exits_val.npz | cached for exits {list(val['exits'])}, the model has {exits}; "
                        f"cache again: edge-model cache-exits --checkpoint {ckpt}", Exit.CORRUPT)
    with np.load(ctrl / "predictor.npz") as z:
        P = z["projection"].astype(np.float32)                       # (width, dims)
    head0 = model.heads[0].norm
    if P.shape[0] != head0.normalized_shape[0]:
        raise EdgeError(f"{ctrl}/predictor.npz | projection width {P.shape[0]}, the model's is "
                        f"{head0.normalized_shape[0]}: fit the controller again", Exit.CORRUPT)

    # The projection for the pre-affine vector (module docstring): what the device computes the features with
    gamma, beta = head0.weight.detach().double().numpy(), head0.bias.detach().double().numpy()
    projection = Projection((gamma[:, None] * P).astype(np.float32), (beta @ P).astype(np.float32), head0.eps)
    np.savez(tmp / "projection.npz", weight=projection.weight, bias=projection.bias)

    x, mask, labels = reference_inputs(config, ckpt, data_dir, samples)
    say(f"folding and exporting {len(exits)} segments (ONNX opset {opset})", flush=True)
    folded = fold_model(model)
    example = x if mask is None else (x, mask)
    records = export_segments(folded, tmp, example, opset)
    say(f"exporting {2 * len(exits) - 1} chain graphs (one exit head each) and the plain full-depth baseline",
        flush=True)
    chains = export_chains(folded, tmp, example, opset)
    (tmp / BASELINE).parent.mkdir()
    baseline = export_plain(model, tmp / BASELINE, example, opset)
    ir_version = max(int(onnx.load(str(tmp / r["file"])).ir_version) for r in records)
    logits, features = reference_outputs(model, x, mask, P, task)

    # what the device computes from segment 0's outputs, against the workstation's from the unfolded model
    from edge_runtime.core.features import from_segment_0
    with torch.no_grad():
        h0, logits0 = folded.segment(0)(x, mask)
    device = from_segment_0(x.numpy(), None if mask is None else mask.numpy(), h0.numpy(), logits0.numpy(),
                            projection, task["preprocess"].get("max_len", 0))
    err = float(np.abs(device - features).max())
    if not err <= PROJECTION_ATOL:
        raise RuntimeError(f"features | the device's differ from the workstation's by {err:.3g} on the reference batch")

    names = input_names(0, text)
    feed = dict(zip(names, [x.numpy()] + ([mask.numpy()] if text else [])))
    np.savez(tmp / "reference.npz", logits=logits.astype(np.float32), features=features.astype(np.float32),
             labels=labels.numpy(), **feed)
    for key, file in CONTROLLER_FILES.items():
        shutil.copyfile(ctrl / file, tmp / file)
    from edge_runtime.core.predictor import TreeEnsemble
    TreeEnsemble.from_onnx(tmp / CONTROLLER_FILES["predictor"]).save(tmp / PREDICTOR_TREES)
    if text:
        shutil.copyfile(tokenizer_path(ckpt, config), tmp / "tokenizer.json")

    seg_flops = segment_flops(model)
    plain = np.array([model_flops(model, d) for d in exits], np.float64)   # depth-d model, one head
    trunk0 = plain[0] - 2 * model.heads[0].head.in_features * model.heads[0].head.out_features
    chain = np.cumsum(seg_flops)                                           # every head on the way ran
    val_acc = (val["logits"].argmax(-1) == val["labels"][:, None]).mean(0)
    predictor_meta = json.loads((ctrl / "predictor.json").read_text())
    commit, dirty = git_state()
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": name,
        "task": {"kind": task["kind"], "labels": task["labels"], "preprocess": task["preprocess"],
                 "dataset": task["dataset"], **({"tokenizer": ref(tmp / "tokenizer.json")} if text else {})},
        "segments": [{"index": r["index"], "exit": r["exit"], "file": r["file"], "sha256": r["sha256"],
                      "bytes": r["bytes"], "flops": int(seg_flops[r["index"]]), "params": r["params"],
                      "inputs": r["inputs"], "outputs": r["outputs"], "ort_max_abs": r["ort_max_abs"]}
                     for r in records],
        # chain (j, K): segments j..K in one graph with exit K's head only (edge_model.export.DepthGraph)
        "chains": [{"from": c["from"], "to": c["to"], "file": c["file"], "sha256": c["sha256"], "bytes": c["bytes"],
                    "flops": int(plain[c["to"]] - (trunk0 if c["from"] else 0)), "inputs": c["inputs"],
                    "outputs": c["outputs"], "ort_max_abs": c["ort_max_abs"]} for c in chains],
        # the unfolded model as one plain graph: what bench measures against; the device does not need it
        "baseline": {"file": BASELINE, "sha256": baseline["sha256"], "bytes": baseline["bytes"],
                     "flops": int(plain[-1]), "inputs": baseline["inputs"], "outputs": baseline["outputs"],
                     "what": "the unfolded checkpoint at full depth, one graph, the same exporter and opset"},
        "variants": [{"depth": d, "exit_index": k, "chain": list(range(k + 1)),
                      "flops": int(chain[k]),   # what the chain runs: earlier exit heads included
                      "val_accuracy": float(val_acc[k])} for k, d in enumerate(exits)],
        "controller": {
            **{key: ref(tmp / file) for key, file in CONTROLLER_FILES.items()},
            "predictor_trees": ref(tmp / PREDICTOR_TREES),
            "projection": ref(tmp / "projection.npz"),
            # the compute the policy's state and oneshot's cost read, as fractions of the plain full depth
            "costs": {"used": (chain / plain[-1]).tolist(), "plain": (plain / plain[-1]).tolist()},
            "operating_points": operating_points(ckpt, ctrl),
            # Learn then Test's counts per lambda on the validation split: the device certifies any eps from them
            "calibration": calibration(ckpt, ctrl),
            "features": {
                "names": predictor_meta["feature_names"],
                "input_stats": {"kind": task["kind"], **INPUT_STATS[task["kind"]]},
                "confidence": {"names": ["max_prob", "margin", "entropy"], "of": "segment 0's logits",
                               "function": "edge_runtime.core.features.confidence"},
                "projection_dims": int(P.shape[1]),
                "projection_input": ("layer_norm of the " + ("attention-masked " if text else "") +
                                     "mean over tokens of segment 0's hidden_out, without affine "
                                     "(exit 0's norm affine is folded into its classifier)"),
                "projection": "pooled @ weight + bias, with weight = diag(gamma) @ P and bias = beta @ P: "
                              "P is the PCA projection fitted on the post-affine vector gamma * n + beta",
                "pool_eps": float(head0.eps),
                "export_max_abs": err,
                "computed_by": "the runtime, from segment 0's feed, hidden_out and logits "
                               "(edge_runtime.core.features.from_segment_0; its C kernels on the device)",
            },
        },
        "reference": {**ref(tmp / "reference.npz"), "split": "test", "samples": int(len(labels)),
                      "inputs": names, "outputs": {"logits": "(N, exits, classes): PyTorch, unfolded checkpoint",
                                                   "features": "(N, 6 + projection_dims): the workstation's "
                                                               "controller features"}},
        "build": {"backend": "onnxruntime", "precision": "fp32", "opset": opset, "ir_version": ir_version,
                  "reads_with": {"onnxruntime": ort_reads(ir_version, opset)},   # the files' need, not the exporter's
                  "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                               "torch": torch.__version__, "python": platform.python_version()},
                  "device": {"machine": platform.machine(), "processor": platform.processor(),
                             "system": platform.system()}},
        "provenance": {"git_commit": commit, "git_dirty": dirty, "dataset": task["dataset"],
                       "config_sha256": sha256(ckpt / "config.json"), "preset": config.get("preset"),
                       "param_sha256": config.get("param_sha256"),
                       # relative to where export ran: a manifest holds no absolute path
                       "checkpoint": os.path.relpath(ckpt.resolve())},
    }
    write_json(tmp / MANIFEST, manifest)
    return manifest


def export_engines(ckpt_dir, out_dir, data_dir=None, samples: int = REFERENCE_SAMPLES, opset: int = OPSET,
                   name: str = None, progress: bool = True) -> dict:
    """Export a checkpoint with its fitted controller into an engine directory.

    Args:
        ckpt_dir: a trained checkpoint with its exit cache (cache-exits) and controller (fit-controller).
        out_dir: the engine directory to write (replaced if it is one already).
        data_dir: Fashion-MNIST IDX files, when not from the Debian package.
        samples: test inputs in the reference batch.
        opset: the ai.onnx opset of the segment files.
        name: the manifest's name (default: out_dir's name).
        progress: print what is being done.
    Returns:
        The manifest written to out_dir/manifest.json.
    """
    from edge_runtime.core.engine_dir import EngineDir
    ckpt, out = Path(ckpt_dir), Path(out_dir)
    if samples < 1:
        raise EdgeError(f"--samples {samples} | must be at least 1", Exit.BAD_INPUT)
    check_out_dir(out)
    model, config = load_checkpoint(ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        manifest = write_engines(tmp, ckpt, model, config, data_dir, samples, opset, name or out.name, progress)
        EngineDir.open(tmp)   # what the device will do: schema, paths, hashes, build stamp
    return manifest


def export_summary(manifest: dict, out) -> str:
    """A few lines for the terminal: segments, variants, where to go next."""
    lines = [f"engines written to {out} ({manifest['name']}: {len(manifest['segments'])} segments, "
             f"ONNX opset {manifest['build']['opset']}, {manifest['build']['precision']})", "",
             "| depth | chain | MFLOPs | val acc % |", "|---|---|---|---|"]
    for v in manifest["variants"]:
        lines.append(f"| {v['depth']} | {' '.join(map(str, v['chain']))} | {v['flops'] / 1e6:.3f} | "
                     f"{v['val_accuracy'] * 100:.2f} |")
    lines += ["", f"verify with: edge-infer check --engine-dir {out}"]
    return "\n".join(lines)
