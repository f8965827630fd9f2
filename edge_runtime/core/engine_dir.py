"""An engine directory, opened and verified: `EngineDir.open("engines/digits")`.

Opening refuses, in one EdgeError line naming the file and the reason, anything that does not match:
  - the manifest's schema name and version, and its structure (edge_runtime.core.manifest);
  - a path that is absolute, holds '..' or resolves outside the directory;
  - a listed file that is missing, or whose sha256 differs from the manifest's;
  - a build stamp this machine cannot honour: the backend (or its package) is not here, the precision is
    not one the backend runs, onnxruntime is another major version or an older minor than the build's,
    or (for backends whose engines are built per device) another machine.
Nothing here imports torch.
"""
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import backends
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.manifest import MANIFEST, confined, file_refs, read_manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def major_minor(version: str):
    """(major, minor) of a version string such as '1.16.3' or '1.17.0+cu118'; None if unreadable."""
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


@dataclass
class Fit:
    """One line of the build stamp against this machine."""
    item: str
    built: str
    here: str
    ok: bool
    note: str = ""


def build_fit(build: dict) -> list:
    """The build stamp checked item by item against this machine (backend, precision, runtime, device)."""
    name = build.get("backend")
    canonical = backends.ALIASES.get(name, name)
    info, here = backends.BACKENDS.get(canonical), backends.available()
    fit = Fit("backend", name, ", ".join(here) or "none", info is not None and canonical in here)
    if info is None:
        fit.note = "this runtime has no such backend"
    elif not fit.ok:
        fit.note = f"its package {info.package} is not installed (pip install 'edge-adaptive[{info.extra}]')"
    if not fit.ok:
        return [fit]
    fits = [fit]
    precision = build.get("precision")
    fits.append(Fit("precision", precision, "/".join(info.precisions), precision in info.precisions,
                    "" if precision in info.precisions else f"{name} here runs {', '.join(info.precisions)}"))
    if canonical == "onnxruntime":
        built_v = str(build.get("versions", {}).get("onnxruntime", "?"))
        here_v = backends.package_version(canonical)
        b, h = major_minor(built_v), major_minor(here_v)
        # ONNX files read forward: a runtime of the same major and at least the build's minor reads what
        # the build verified (IR version, opset, contrib ops); an older one may not.
        ok = b is not None and h is not None and b[0] == h[0] and h[1] >= b[1]
        note = "" if ok else f"needs {b[0]}.{b[1]} or a later {b[0]}.x" if b else "unreadable version"
        fits.append(Fit("onnxruntime", built_v, here_v, ok, note))
    built_dev = build.get("device", {})
    here_dev = {"machine": platform.machine(), "system": platform.system()}
    same = all(built_dev.get(k) == v for k, v in here_dev.items())
    fits.append(Fit("device", f"{built_dev.get('machine')} {built_dev.get('system')}",
                    f"{here_dev['machine']} {here_dev['system']}", same or info.portable,
                    "" if same else "portable files: any machine runs them" if info.portable else
                    f"{name} engines are built per device: build them on this machine"))
    return fits


def build_refusal(build: dict):
    """None when the stamp fits this machine, else the reason (for a one-line refusal)."""
    for f in build_fit(build):
        if not f.ok:
            return f"build stamp: {f.item} {f.built}, this machine has {f.here}" + (f" ({f.note})" if f.note else "")
    return None


def verified_file(root: Path, ref: dict, where: str) -> Path:
    """The file a manifest entry {file, sha256} names, confined to `root`, present, and with that hash."""
    path = confined(root, ref["file"], where)
    if not path.is_file():
        raise EdgeError(f"{ref['file']} | missing (listed in manifest {where}.file)", Exit.NOT_FOUND)
    got = sha256_file(path)
    if got != ref["sha256"]:
        raise EdgeError(f"{ref['file']} | sha256 mismatch (manifest {ref['sha256'][:8]}…, file {got[:8]}…)",
                        Exit.CORRUPT)
    return path


@dataclass
class GraphSpec:
    """One graph a backend runs: its file and the manifest's I/O spec."""
    name: str
    path: Path
    inputs: list      # [{name, shape, dtype}], the batch axis named
    outputs: list


@dataclass
class Projection:
    """The controller's projected features from segment 0's hidden output.

    export rewrote the PCA projection P (fitted on the first exit's post-affine pooled vector) for the
    pre-affine vector the folded graphs leave: with n = layer_norm(pooled) and no affine,
    (gamma * n + beta) @ P = n @ weight + bias, where weight = diag(gamma) @ P and bias = beta @ P.
    """
    weight: np.ndarray   # (width, P)
    bias: np.ndarray     # (P,)
    eps: float

    def pool(self, hidden: np.ndarray, mask: np.ndarray = None) -> np.ndarray:
        """(N, width): the (masked) mean over tokens, normalised without affine, as exit 0's head does."""
        if mask is None:
            pooled = hidden.mean(1)                                            # (N, C)
        else:
            keep = mask.astype(np.float32)[:, :, None]                         # (N, T, 1)
            pooled = (hidden * keep).sum(1) / np.clip(keep.sum(1), 1.0, None)
        pooled -= pooled.mean(-1, keepdims=True)
        pooled /= np.sqrt((pooled * pooled).mean(-1, keepdims=True) + self.eps)
        return pooled.astype(np.float32, copy=False)

    def __call__(self, hidden: np.ndarray, mask: np.ndarray = None) -> np.ndarray:
        """(N, P) projected features from segment 0's hidden_out (N, T, C)."""
        return (self.pool(hidden, mask) @ self.weight + self.bias).astype(np.float32)


class EngineDir:
    """A verified engine directory. Use `EngineDir.open(path)`; the constructor checks nothing."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest

    @classmethod
    def open(cls, path, check_build: bool = True) -> "EngineDir":
        """Read, verify and return the engine directory at `path`.

        Args:
            path: the directory holding manifest.json.
            check_build: refuse a build stamp this machine cannot run (`info` reports it instead).
        """
        root = Path(path)
        manifest = read_manifest(root)
        for where, ref in file_refs(manifest):
            verified_file(root, ref, where)
        if check_build:
            reason = build_refusal(manifest["build"])
            if reason:
                raise EdgeError(f"{MANIFEST} | {reason}", Exit.BAD_INPUT)
        return cls(root, manifest)

    # --- the manifest's parts
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def task(self) -> dict:
        return self.manifest["task"]

    @property
    def segments(self) -> list:
        return self.manifest["segments"]

    @property
    def variants(self) -> list:
        return self.manifest["variants"]

    @property
    def build(self) -> dict:
        return self.manifest["build"]

    @property
    def controller(self) -> dict:
        return self.manifest["controller"]

    def file(self, rel: str) -> Path:
        return confined(self.root, rel, "file")

    def graphs(self) -> dict:
        """{"segment_K": GraphSpec} for every segment, in chain order."""
        return {f"segment_{s['index']}": GraphSpec(f"segment_{s['index']}", self.file(s["file"]),
                                                   s["inputs"], s["outputs"]) for s in self.segments}

    def variant(self, depth: int) -> dict:
        for v in self.variants:
            if v["depth"] == depth:
                return v
        raise EdgeError(f"depth {depth} | not a variant of {self.name} (depths: "
                        f"{', '.join(str(v['depth']) for v in self.variants)})", Exit.BAD_INPUT)

    def reference(self) -> dict:
        """The reference batch: the inputs, `logits` (N, exits, classes) and `projected` from PyTorch."""
        path = self.file(self.manifest["reference"]["file"])
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise EdgeError(f"{path.name} | not a reference batch ({err})", Exit.CORRUPT) from None

    def policy_arrays(self):
        from edge_runtime.core.policy import PolicyArrays
        return PolicyArrays.load(self.file(self.controller["policy_arrays"]["file"]))


def describe(engine: EngineDir) -> str:
    """`edge-infer info`: the manifest in a screenful, and whether its build stamp fits this machine."""
    m, task, b, prov = engine.manifest, engine.task, engine.build, engine.manifest["provenance"]
    first = engine.segments[0]["inputs"]
    labels = task["labels"]
    shown = ", ".join(map(str, labels[:10])) + (f", … ({len(labels)} in all)" if len(labels) > 10 else "")
    v = b["versions"]
    commit = prov.get("git_commit")
    fits = build_fit(b)
    ctrl = engine.controller
    lines = [
        f"engine      {engine.name} ({engine.root}), schema {m['schema']} v{m['schema_version']}",
        f"task        {task['kind']} on {task['dataset']}, labels: {shown}",
        "input       " + "; ".join(f"{i['name']} ({', '.join(map(str, i['shape']))}) {i['dtype']}" for i in first),
        f"segments    {len(engine.segments)} files, {sum(s['bytes'] for s in engine.segments) / 1024:.1f} KiB, "
        f"{sum(s['params'] for s in engine.segments):,} params",
        f"controller  {ctrl['predictor']['file']}, {ctrl['policy']['file']} + {ctrl['policy_arrays']['file']}, "
        f"{ctrl['projection']['file']} ({len(ctrl['features']['names'])} features, "
        f"{ctrl['features']['projection_dims']} projected)",
        f"reference   {m['reference'].get('samples', '?')} {m['reference'].get('split', '')} inputs "
        f"({m['reference']['file']})",
        f"build       {b['backend']} {b['precision']}, opset {b['opset']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; on {b['device'].get('machine')} {b['device'].get('system')}",
        f"provenance  git {commit[:12] if commit else 'unknown'}{' (dirty)' if prov.get('git_dirty') else ''}, "
        f"dataset {prov.get('dataset')}, preset {prov.get('preset')}, config sha256 "
        f"{str(prov.get('config_sha256'))[:12]}…, checkpoint {prov.get('checkpoint')}",
        f"this machine {'fits the build stamp' if all(f.ok for f in fits) else 'does NOT fit the build stamp'}:",
    ]
    for f in fits:
        lines.append(f"  {'ok ' if f.ok else 'NO '} {f.item:<12} built {f.built}, here {f.here}"
                     + (f" ({f.note})" if f.note else ""))
    lines += ["", "| depth | chain | MFLOPs | val acc % | latency ms |", "|---|---|---|---|---|"]
    for var in engine.variants:
        lat = "-" if var.get("latency_ms") is None else f"{var['latency_ms']:.3f}"
        lines.append(f"| {var['depth']} | {' '.join(map(str, var['chain']))} | {var['flops'] / 1e6:.3f} | "
                     f"{var['val_accuracy'] * 100:.2f} | {lat} |")
    return "\n".join(lines)
