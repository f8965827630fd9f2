"""Checkpoints: model.safetensors + config.json (+ tokenizer.json for text). Never pickle.

One loader serves train, eval, cache-exits and export. Every failure is one EdgeError line.
"""
import json
from pathlib import Path

from edge_model.presets import build_model, config_dict, model_config
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import atomic_path, write_atomic

FORMAT = "edge-model-checkpoint"
VERSION = 1


def write_json(path: Path, obj) -> None:
    """`obj` as indented JSON, written whole or not at all."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_checkpoint(out_dir, model, arch: str, task: dict, extra: dict) -> Path:
    from safetensors.torch import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    config = {"format": FORMAT, "version": VERSION, "arch": arch, "model": config_dict(model.cfg),
              "task": task, **extra}
    write_json(out / "config.json", config)
    return out


def read_config(ckpt_dir) -> dict:
    d = Path(ckpt_dir)
    path = d / "config.json"
    if not d.is_dir():
        raise EdgeError(f"checkpoint {d} | not a directory", Exit.NOT_FOUND)
    if not path.is_file():
        raise EdgeError(f"checkpoint {d} | no config.json (not a checkpoint directory)", Exit.NOT_FOUND)
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeError(f"{path} | not valid JSON ({err})", Exit.CORRUPT) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise EdgeError(f"{path} | not an {FORMAT} config", Exit.CORRUPT)
    if config.get("version") != VERSION:
        raise EdgeError(f"{path} | unknown version {config.get('version')} (this build reads {VERSION})",
                        Exit.CORRUPT)
    for key, kind in (("arch", str), ("model", dict), ("task", dict)):
        if not isinstance(config.get(key), kind):
            raise EdgeError(f"{path} | '{key}' missing or not a {kind.__name__}", Exit.CORRUPT)
    for key in ("dataset", "kind", "labels", "preprocess"):
        if key not in config["task"]:
            raise EdgeError(f"{path} | task.{key} missing", Exit.CORRUPT)
    return config


def load_checkpoint(ckpt_dir):
    """(model in eval mode, config dict) from a checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    config = read_config(ckpt_dir)
    model = build_model(config["arch"], model_config(config["arch"], config["model"]))
    path = Path(ckpt_dir) / "model.safetensors"
    if not path.is_file():
        raise EdgeError(f"{path} | missing", Exit.NOT_FOUND)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise EdgeError(f"{path} | corrupt or truncated ({err})", Exit.CORRUPT) from None
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise EdgeError(f"{path} | missing tensor {name}", Exit.CORRUPT)
        if state[name].shape != tensor.shape:
            raise EdgeError(f"{path} | tensor {name} has shape {tuple(state[name].shape)}, the config "
                            f"needs {tuple(tensor.shape)}", Exit.CORRUPT)
    extra = sorted(set(state) - set(expected))
    if extra:
        raise EdgeError(f"{path} | unexpected tensor {extra[0]}", Exit.CORRUPT)
    model.load_state_dict(state)
    digest = config.get("param_sha256")
    if digest and param_digest(model) != digest:
        raise EdgeError(f"{path} | weights do not match config.json's param_sha256", Exit.CORRUPT)
    return model.eval(), config


def tokenizer_path(ckpt_dir, config: dict):
    return Path(ckpt_dir) / config["task"]["preprocess"]["tokenizer"] if config["task"]["kind"] == "text" else None


def param_digest(model) -> str:
    """sha256 over every parameter's bytes in name order: equal digests mean equal weights."""
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
