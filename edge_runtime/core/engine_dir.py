"""An engine directory, opened and verified: `EngineDir.open("engines/digits")`.

Opening refuses, in one EdgeError line naming the file and the reason, anything that does not match:
  - the manifest's schema name and version, and its structure (edge_runtime.core.manifest);
  - a path that is absolute, holds '..' or resolves outside the directory;
  - a listed file that is missing, or whose sha256 differs from the manifest's.
Builds are artifacts of the directory, keyed by (backend, precision): the exported segments are the
onnxruntime fp32 build (stamped in `build`), `edge-infer build` and the device backends add entries to
`builds`, each with its own stamp. `EngineDir.build(backend, precision)` picks one and refuses, in one
line, a stamp this machine cannot honour: the backend (or its package) is not here, the precision is not
one the backend runs, onnxruntime is another major version or an older minor than the build's, or (for
backends whose engines are built per device) another machine. Nothing here imports torch.
"""
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import backends
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import sha256_file
from edge_runtime.core.manifest import MANIFEST, confined, file_refs, read_manifest

EXPORT = "exported fp32 segments"


def major_minor(version: str):
    """(major, minor) of a version string such as '1.16.3' or '1.17.0+cu118'; None if unreadable."""
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


@dataclass
class Fit:
    """One line of a build stamp against this machine."""
    item: str
    built: str
    here: str
    ok: bool
    note: str = ""


def build_fit(stamp: dict) -> list:
    """A build stamp checked item by item against this machine (backend, precision, runtime, device)."""
    name = stamp.get("backend")
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
    precision = stamp.get("precision")
    fits.append(Fit("precision", precision, "/".join(info.precisions), precision in info.precisions,
                    "" if precision in info.precisions else f"{name} here runs {', '.join(info.precisions)}"))
    if canonical == "onnxruntime":
        built_v = str(stamp.get("versions", {}).get("onnxruntime", "?"))
        here_v = backends.package_version(canonical)
        b, h = major_minor(built_v), major_minor(here_v)
        # ONNX files read forward: a runtime of the same major and at least the build's minor reads what
        # the build verified (IR version, opset, contrib ops); an older one may not.
        ok = b is not None and h is not None and b[0] == h[0] and h[1] >= b[1]
        note = "" if ok else f"needs {b[0]}.{b[1]} or a later {b[0]}.x" if b else "unreadable version"
        fits.append(Fit("onnxruntime", built_v, here_v, ok, note))
    built_dev = stamp.get("device", {})
    here_dev = {"machine": platform.machine(), "system": platform.system()}
    same = all(built_dev.get(k) == v for k, v in here_dev.items())
    fits.append(Fit("device", f"{built_dev.get('machine')} {built_dev.get('system')}",
                    f"{here_dev['machine']} {here_dev['system']}", same or info.portable,
                    "" if same else "portable files: any machine runs them" if info.portable else
                    f"{name} engines are built per device: build them on this machine"))
    return fits


def build_refusal(stamp: dict):
    """None when the stamp fits this machine, else the reason (for a one-line refusal)."""
    for f in build_fit(stamp):
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


@dataclass
class Build:
    """One build of an engine directory: the graphs a backend runs, and the stamp they were made under."""
    backend: str       # canonical backend name
    precision: str
    label: str         # for messages and headers: "exported fp32 segments", "onnxruntime int8 build"
    stamp: dict        # backend, precision, versions, device (the export's `build`, or a `builds` entry)
    graphs: list       # [GraphSpec] in chain order, every file hash-checked


class EngineDir:
    """A verified engine directory. Use `EngineDir.open(path)`; the constructor checks nothing."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest

    @classmethod
    def open(cls, path) -> "EngineDir":
        """Read, verify and return the engine directory at `path` (schema, paths, every file's sha256).

        Args:
            path: the directory holding manifest.json.
        """
        root = Path(path)
        manifest = read_manifest(root)
        for where, ref in file_refs(manifest):
            verified_file(root, ref, where)
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
    def export_stamp(self) -> dict:
        """The stamp of the exported segments (the onnxruntime fp32 build every other build starts from)."""
        return self.manifest["build"]

    @property
    def controller(self) -> dict:
        return self.manifest["controller"]

    def builds(self) -> list:
        """(backend, precision, label, stamp) of every build here, the exported segments first."""
        canonical = (lambda name: backends.ALIASES.get(name, name))   # noqa: E731  (unknown names stay as written)
        out = [(canonical(self.export_stamp["backend"]), "fp32", EXPORT, self.export_stamp)]
        for b in self.manifest.get("builds", []):
            out.append((canonical(b["backend"]), b["precision"], f"{b['backend']} {b['precision']} build", b))
        return out

    def build(self, backend: str, precision: str = "fp32", check: bool = True) -> Build:
        """The build of (backend, precision): a `builds` entry when there is one, else for fp32 the exported
        segments (an onnxruntime build; another backend builds its engines from them). `check` refuses,
        in one line, a stamp this machine cannot honour.
        """
        backend = backends.resolve(backend)
        found = [(i, b) for i, b in enumerate(self.manifest.get("builds", []))
                 if backends.ALIASES.get(b["backend"], b["backend"]) == backend and b["precision"] == precision]
        if found:
            at, entry = found[0]
            where, label = f"builds[{at}]", f"{backend} {precision} build"
            files = entry["files"]
            if len(files) != len(self.segments):
                raise EdgeError(f"{MANIFEST} | {where} lists {len(files)} files for {len(self.segments)} segments",
                                Exit.CORRUPT)
            paths = [verified_file(self.root, f, f"{where}.files[{k}]") for k, f in enumerate(files)]
        elif precision == "fp32" and backend == backends.ALIASES.get(self.export_stamp["backend"],
                                                                     self.export_stamp["backend"]):
            where, label, entry = "build", EXPORT, self.export_stamp
            paths = [self.file(s["file"]) for s in self.segments]
        else:
            have = ", ".join(f"{b} {p}" for b, p, _, _ in self.builds())
            raise EdgeError(f"{MANIFEST} | no {backend} {precision} build (this directory has: {have}; make one: "
                            f"edge-infer build --engine-dir {self.root} --precision {precision})", Exit.NOT_FOUND)
        if check:
            reason = build_refusal(entry)
            if reason:
                raise EdgeError(f"{MANIFEST} | {where} ({label}): {reason}", Exit.BAD_INPUT)
        graphs = [GraphSpec(f"segment_{s['index']}", p, s["inputs"], s["outputs"]) for s, p in zip(self.segments, paths)]
        return Build(backend, precision, label, entry, graphs)

    def bench_for(self, backend: str, precision: str, threads: int, batch: int = 1):
        """The `bench` measurement of this build at `threads` and `batch`, or None."""
        for m in self.manifest.get("bench", []):
            if (m["backend"], m["precision"], m["threads"], m["batch"]) == (backend, precision, threads, batch):
                return m
        return None

    def file(self, rel: str) -> Path:
        return confined(self.root, rel, "file")

    def graphs(self) -> list:
        """[GraphSpec] of the exported segments, in chain order."""
        return [GraphSpec(f"segment_{s['index']}", self.file(s["file"]), s["inputs"], s["outputs"])
                for s in self.segments]

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
    """`edge-infer info`: the manifest in a screenful, and whether each build's stamp fits this machine."""
    m, task, prov = engine.manifest, engine.task, engine.manifest["provenance"]
    first = engine.segments[0]["inputs"]
    labels = task["labels"]
    shown = ", ".join(map(str, labels[:10])) + (f", … ({len(labels)} in all)" if len(labels) > 10 else "")
    commit = prov.get("git_commit")
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
        f"provenance  git {commit[:12] if commit else 'unknown'}{' (dirty)' if prov.get('git_dirty') else ''}, "
        f"dataset {prov.get('dataset')}, preset {prov.get('preset')}, config sha256 "
        f"{str(prov.get('config_sha256'))[:12]}…, checkpoint {prov.get('checkpoint')}",
    ]
    for backend, precision, label, stamp in engine.builds():
        fits = build_fit(stamp)
        versions = ", ".join(f"{k} {val}" for k, val in stamp.get("versions", {}).items())
        lines.append(f"build       {label}: {backend} {precision}, opset {stamp.get('opset')}; {versions}; on "
                     f"{stamp.get('device', {}).get('machine')} {stamp.get('device', {}).get('system')}; this machine "
                     f"{'fits its stamp' if all(f.ok for f in fits) else 'does NOT fit its stamp'}:")
        for f in fits:
            lines.append(f"  {'ok ' if f.ok else 'NO '} {f.item:<12} built {f.built}, here {f.here}"
                         + (f" ({f.note})" if f.note else ""))
    measured = m.get("bench", [])
    heads = [f"{b['backend']} {b['precision']} {b['threads']}t ms" for b in measured]
    lines += ["", "| depth | chain | MFLOPs | val acc % |" + "".join(f" {h} |" for h in heads),
              "|---|---|---|---|" + "---|" * len(heads)]
    for var in engine.variants:
        lat = "".join(f" {b['variant_ms'].get(str(var['depth']), float('nan')):.3f} |" for b in measured)
        lines.append(f"| {var['depth']} | {' '.join(map(str, var['chain']))} | {var['flops'] / 1e6:.3f} | "
                     f"{var['val_accuracy'] * 100:.2f} |{lat}")
    if not measured:
        lines.append("(no latency measured here yet: edge-infer bench --engine-dir DIR)")
    return "\n".join(lines)
