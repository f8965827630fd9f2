"""An engine directory, opened and verified: `EngineDir.open("engines/digits")`.

Opening refuses, in one EdgeError line naming the file and the reason, anything that does not match:
  - the manifest's schema name and version, and its structure (edge_runtime.core.manifest);
  - a path that is absolute, holds '..' or resolves outside the directory;
  - a listed file that is missing, or whose sha256 differs from the manifest's.
Builds are artifacts of the directory, keyed by (backend, precision): the exported segments are the
onnxruntime fp32 build (stamped in `build`), `edge-infer build` and the device backends add entries to
`builds`, each with its own stamp. `EngineDir.build(backend, precision)` picks one, its files checked;
whether its stamp fits this machine is the backends' to say (edge_runtime.backends.stamp_refusal), and
the runtime asks before it opens one. Nothing here imports torch.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import sha256_file
from edge_runtime.core.manifest import MANIFEST, confined, file_refs, read_manifest

EXPORT = "exported fp32 segments"


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
    where: str         # where the manifest keeps its stamp: "build" or "builds[K]"
    stamp: dict        # backend, precision, versions, device (the export's `build`, or a `builds` entry)
    graphs: list       # [GraphSpec] in chain order, every file hash-checked
    chains: dict = None   # {(from, to): GraphSpec}: segments from..to as one graph, exit `to`'s head only


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
        out = [(self.export_stamp["backend"], "fp32", EXPORT, self.export_stamp)]
        for b in self.manifest.get("builds", []):
            out.append((b["backend"], b["precision"], f"{b['backend']} {b['precision']} build", b))
        return out

    def build(self, backend: str, precision: str = "fp32", from_export: tuple = ("fp32",)) -> Build:
        """The build of (backend, precision): a `builds` entry when there is one (open() hash-checked its files),
        else, for a precision in `from_export` (those the backend runs straight from the exported ONNX graphs:
        onnxruntime fp32, torch-CUDA fp32 and fp16), the exported segments under the export's stamp.
        `backend` is a canonical name (edge_runtime.backends.resolve)."""
        found = [(i, b) for i, b in enumerate(self.manifest.get("builds", []))
                 if b["backend"] == backend and b["precision"] == precision]
        if found:
            at, entry = found[0]
            where, label = f"builds[{at}]", f"{backend} {precision} build"
            files = entry["files"]
            if len(files) != len(self.segments):
                raise EdgeError(f"{MANIFEST} | {where} lists {len(files)} files for {len(self.segments)} segments",
                                Exit.CORRUPT)
            paths = [self.file(f["file"]) for f in files]   # hash-checked by open(), with every listed file
            chain_files = {(c["from"], c["to"]): c["file"] for c in entry.get("chains") or []}
        elif precision in from_export or (precision == "fp32" and backend == self.export_stamp["backend"]):
            where, entry = "build", self.export_stamp
            label = EXPORT if precision == "fp32" else f"{EXPORT} run in {precision}"
            if backend != entry["backend"]:    # another backend running the same files: its stamp to check
                entry = dict(entry, backend=backend, precision=precision)
            paths = [self.file(s["file"]) for s in self.segments]
            chain_files = {(c["from"], c["to"]): c["file"] for c in self.manifest.get("chains") or []}
        else:
            have = ", ".join(label for _, _, label, _ in self.builds())
            raise EdgeError(f"{MANIFEST} | no {backend} {precision} build (this directory has: {have}; make one: "
                            f"edge-infer build --engine-dir {self.root} --backend {backend} --precision {precision})",
                            Exit.NOT_FOUND)
        graphs = [GraphSpec(f"segment_{s['index']}", p, s["inputs"], s["outputs"]) for s, p in zip(self.segments, paths)]
        specs = {(c["from"], c["to"]): c for c in self.manifest.get("chains") or []}
        chains = {key: GraphSpec(f"chain_{key[0]}_{key[1]}", self.file(f), specs[key]["inputs"], specs[key]["outputs"])
                  for key, f in chain_files.items() if key in specs}
        return Build(backend, precision, label, where, entry, graphs, chains)

    def baseline(self) -> GraphSpec:
        """The plain full-depth graph bench measures against, hash-checked here (opening does not ask for it:
        a device may not have it)."""
        ref = self.manifest.get("baseline")
        if ref is None:
            raise EdgeError(f"{MANIFEST} | no baseline graph (export again with this edge-model)", Exit.NOT_FOUND)
        return GraphSpec("baseline", verified_file(self.root, ref, "baseline"), ref["inputs"], ref["outputs"])

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

    def projection(self) -> Projection:
        """The controller's feature projection (projection.npz, and the pooling eps from the manifest)."""
        path = self.file(self.controller["projection"]["file"])
        try:
            with np.load(path) as z:
                weight, bias = z["weight"].astype(np.float32), z["bias"].astype(np.float32)
        except (OSError, ValueError, KeyError) as err:
            raise EdgeError(f"{path.name} | not a projection file ({err})", Exit.CORRUPT) from None
        if weight.ndim != 2 or bias.shape != (weight.shape[1],):
            raise EdgeError(f"{path.name} | weight {weight.shape} and bias {bias.shape} do not fit", Exit.CORRUPT)
        return Projection(np.ascontiguousarray(weight), bias, float(self.controller["features"]["pool_eps"]))

    def policy_arrays(self):
        from edge_runtime.core.policy import PolicyArrays
        return PolicyArrays.load(self.file(self.controller["policy_arrays"]["file"]))
