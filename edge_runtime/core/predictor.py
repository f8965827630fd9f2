"""The level-1 complexity predictor on the device: predictor.onnx's tree ensemble, walked by one compiled call.

The engine directory ships the LightGBM predictor as one ONNX TreeEnsembleClassifier node (checked equal to
LightGBM when it was fitted). Run through an ONNX Runtime session, each input pays the session call on top
of the trees (about 25 us between two segment runs on this CPU); here the node's arrays are read once and
the trees walked by edge_runtime._kernels.forest (C, built at install), as ONNX Runtime does: float32
features and thresholds, BRANCH_LEQ (x <= t) or BRANCH_LT, NaN to the branch `nodes_missing_value_tracks_true`
names, leaf weights summed per class, then the node's post_transform (SOFTMAX for LightGBM's multiclass, or
NONE). Tested equal to ONNX Runtime on the same file. The node is read by edge_runtime.core.onnx_proto,
without the onnx package.
"""
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.kernels import kernels
from edge_runtime.core.onnx_proto import FLOATS, INTS, STRING, STRINGS, Malformed, Unsupported, read_model


MODES = ("BRANCH_LEQ", "BRANCH_LT", "LEAF")
ATTRIBUTES = {"nodes_treeids": INTS, "nodes_nodeids": INTS, "nodes_modes": STRINGS, "nodes_featureids": INTS,
              "nodes_values": FLOATS, "nodes_truenodeids": INTS, "nodes_falsenodeids": INTS,
              "nodes_missing_value_tracks_true": INTS, "class_treeids": INTS, "class_nodeids": INTS,
              "class_ids": INTS, "class_weights": FLOATS, "classlabels_int64s": INTS, "post_transform": STRING,
              "base_values": FLOATS}
OPTIONAL = ("nodes_missing_value_tracks_true", "post_transform", "base_values")
LEAF = -1.0


@dataclass
class TreeEnsemble:
    """One row of 4 float32 per node, so a visit touches one cache line (ONNX Runtime packs its nodes too):
    branch: threshold, feature (as -(feature + 2) for BRANCH_LT), true child, false child;
    leaf:   0, LEAF, class, weight. Node and feature indices are exact in float32 below 2 ** 24. Each tree is
    laid out depth first, so a child always comes after its parent: the C walk checks that, and every
    feature, class and node index, as it visits a node."""
    nodes: np.ndarray        # (nodes, 4) float32
    nan_true: np.ndarray     # (nodes,) bool: where a NaN goes
    roots: np.ndarray        # (trees,) int64
    classes: int
    softmax: bool
    num_features: int

    @classmethod
    def from_onnx(cls, path) -> "TreeEnsemble":
        a, num_features = _tree_node(path)
        post = a.get("post_transform", b"NONE").decode("utf-8", "replace")
        modes = [m.decode("utf-8", "replace") for m in a["nodes_modes"]]
        trees = a["nodes_treeids"]
        index = {(t, i): j for j, (t, i) in enumerate(zip(trees, a["nodes_nodeids"]))}
        leaves = [j for j, m in enumerate(modes) if m == "LEAF"]
        one_each = sorted(index.get((t, i), -1) for t, i in zip(a["class_treeids"], a["class_nodeids"])) == leaves
        if post not in ("SOFTMAX", "NONE") or any(m not in MODES for m in modes) or a.get("base_values") \
                or not one_each or len(index) >= 2 ** 24:
            raise EdgeError(f"{path} | tree modes {sorted(set(modes))}, post_transform {post}: this runtime walks "
                            "BRANCH_LEQ / BRANCH_LT trees with one class weight per leaf, SOFTMAX or NONE and no "
                            "base values", Exit.CORRUPT)
        classes = len(a["classlabels_int64s"])
        features = [f for f, m in zip(a["nodes_featureids"], modes) if m != "LEAF"]
        bad = ("two nodes share a tree and node id" if len(index) != len(modes) else
               "a feature id is not an input column" if any(not 0 <= f < num_features for f in features) else
               "a class id is not a class label's index" if any(not 0 <= c < classes for c in a["class_ids"]) else
               "")
        # each tree laid out depth first, true child next to its parent: a path down a tree reads mostly
        # consecutive rows (the file's order is breadth first)
        children = {j: (index.get((t, tc), -1), index.get((t, fc), -1)) for j, (t, m, tc, fc) in
                    enumerate(zip(trees, modes, a["nodes_truenodeids"], a["nodes_falsenodeids"])) if m != "LEAF"}
        order, roots, seen = [], [], set()
        for t in sorted(set(trees)):
            roots.append(len(order))
            stack = [index.get((t, 0), -1)]
            while stack and not bad:
                j = stack.pop()
                if j < 0 or j in seen:
                    bad = f"tree {t} names a missing node or one node twice"
                    break
                seen.add(j)
                order.append(j)
                if j in children:
                    stack += [children[j][1], children[j][0]]
        if not bad and len(order) != len(modes):
            bad = "some nodes are in no tree"
        if bad:
            raise EdgeError(f"{path} | its trees are not well formed: {bad}", Exit.CORRUPT)
        new = {j: i for i, j in enumerate(order)}
        nodes = np.zeros((len(order), 4), np.float32)
        for j, (m, f, v) in enumerate(zip(modes, a["nodes_featureids"], a["nodes_values"])):
            if m != "LEAF":
                nodes[new[j]] = (v, f if m == "BRANCH_LEQ" else -(f + 2), new[children[j][0]], new[children[j][1]])
        for t, i, c, w in zip(a["class_treeids"], a["class_nodeids"], a["class_ids"], a["class_weights"]):
            nodes[new[index[(t, i)]]] = (0.0, LEAF, c, w)
        tracks = a.get("nodes_missing_value_tracks_true", [0] * len(modes))
        nan_true = np.array([tracks[j] for j in order], bool)
        roots = np.array(roots, np.int64)
        return cls(nodes, nan_true, roots, classes, post == "SOFTMAX", num_features)

    ARRAYS = ("nodes", "nan_true", "roots", "classes", "softmax", "num_features")

    def save(self, path) -> None:
        """The arrays as one .npz (edge-model export writes predictor_trees.npz: the device reads it in about
        a millisecond, where parsing predictor.onnx in Python took 21 ms of the cold start)."""
        from edge_runtime.core.files import atomic_path
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(getattr(self, k)) for k in self.ARRAYS})

    @classmethod
    def load(cls, path) -> "TreeEnsemble":
        """save()'s file, its arrays' kinds and shapes checked (the C walk checks every index it visits)."""
        try:
            with np.load(path) as z:
                a = {k: z[k] for k in cls.ARRAYS}
        except (OSError, ValueError, KeyError) as err:
            raise EdgeError(f"{path} | not a tree file ({err})", Exit.CORRUPT) from None
        nodes, nan_true, roots = a["nodes"], a["nan_true"], a["roots"]
        if nodes.dtype != np.float32 or nodes.ndim != 2 or nodes.shape[1] != 4 or nan_true.dtype != bool \
                or nan_true.shape != (len(nodes),) or roots.dtype != np.int64 or roots.ndim != 1 \
                or a["classes"].shape or a["num_features"].shape or a["softmax"].shape:
            raise EdgeError(f"{path} | its arrays are not TreeEnsemble's (nodes (N, 4) float32, nan_true (N,) bool, "
                            "roots (T,) int64, three scalars)", Exit.CORRUPT)
        return cls(np.ascontiguousarray(nodes), np.ascontiguousarray(nan_true), np.ascontiguousarray(roots),
                   int(a["classes"]), bool(a["softmax"]), int(a["num_features"]))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, classes) float32 probabilities for (N, F) float32 features."""
        x = np.ascontiguousarray(features, np.float32)
        out = np.empty((len(x), self.classes), np.float32)
        kernels.forest(x, self.nodes, self.nan_true, self.roots, self.softmax, out)
        return out


def _tree_node(path):
    """predictor.onnx's one TreeEnsembleClassifier: its attributes, checked present, typed and of matching
    lengths, and the feature count of its (N, features) input. Read by edge_runtime.core.onnx_proto, not the
    onnx package, whose import alone costs about 0.8 s of the cold start."""
    try:
        with open(path, "rb") as f:
            model = read_model(f.read())
    except FileNotFoundError:
        raise EdgeError(f"{path} | no such file", Exit.NOT_FOUND) from None
    except OSError as err:
        raise EdgeError(f"{path} | cannot read it ({err.strerror or err})", Exit.CORRUPT) from None
    except Malformed as err:
        raise EdgeError(f"{path} | not an ONNX file ({err})", Exit.CORRUPT) from None
    except Unsupported as err:
        raise EdgeError(f"{path} | {err}: this runtime reads float, int and string attributes only",
                        Exit.CORRUPT) from None
    found = [n for n in model.nodes if n.op_type == "TreeEnsembleClassifier" and n.domain == "ai.onnx.ml"]
    if len(model.nodes) != 1 or not found:
        raise EdgeError(f"{path} | expected one TreeEnsembleClassifier node", Exit.CORRUPT)
    node = found[0]
    wrong = [k for k, kind in ATTRIBUTES.items() if node.types.get(k, kind if k in OPTIONAL else None) != kind]
    if wrong:
        raise EdgeError(f"{path} | its TreeEnsembleClassifier lacks or mistypes {', '.join(wrong)}", Exit.CORRUPT)
    a = node.attributes
    for group in ("nodes_", "class_"):
        lengths = {k: len(v) for k, v in a.items() if k.startswith(group) and k in ATTRIBUTES}
        if len(set(lengths.values())) > 1:
            raise EdgeError(f"{path} | its TreeEnsembleClassifier's {group}* lists differ in length "
                            f"({', '.join(f'{k} {n}' for k, n in lengths.items())})", Exit.CORRUPT)
    dims = model.input_dims[0] if model.input_dims else []
    num_features = dims[1] if len(dims) == 2 else 0
    if not 1 <= num_features < 2 ** 24:
        raise EdgeError(f"{path} | its input is not (N, features) with a fixed feature count", Exit.CORRUPT)
    return a, num_features
