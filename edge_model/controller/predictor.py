"""Level 1 of the controller: a LightGBM complexity predictor, exported to ONNX for the device.

Input: the controller features (edge_runtime.core.features): input statistics, the first exit's confidence
and its pooled vector projected on P PCA directions of the training split. Label: the stable depth
(edge_model.exits.stable_depths). Output: proba (N, E), a distribution over the exit each input needs,
in exit order; PredictorOnly and OneShot (methods.py) read it.

The model is a plain multiclass booster with num_class = E, so an exit that no training input needs
still has its column (LightGBM gives it ~1e-15) and the ONNX graph outputs (N, E) with no class map.
Saved as LightGBM text + .npz + JSON (never pickle); exported as one TreeEnsembleClassifier node.
"""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_model.checkpoint import write_json
from edge_model.controller.table import ExitTable
from edge_model.exits import stable_depths
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.features import CONFIDENCE, INPUT_STATS, controller_features

# Small on purpose: a few thousand rows and ~14 features; fitting takes well under a second per split.
PARAMS = {
    "objective": "multiclass",
    # small trees: the device walks every tree per input between two segment runs, with cold caches; 7 leaves
    # at rate 0.1 stop near 170 trees of 13 nodes (fmnist-vit: 4 us) where 31 leaves at 0.05 took 343 of
    # 61 (17 us), for a test log loss of 0.195 against 0.187 (prior 0.246)
    "learning_rate": 0.1,
    "num_leaves": 7,
    "min_data_in_leaf": 20,      # LightGBM's default; rare deep classes stay out of tiny leaves
    "num_threads": 1,            # two cores shared with background trainings
    "deterministic": True,
    "force_row_wise": True,      # deterministic needs one fixed histogram layout
    "verbose": -1,
}
MAX_TREES = 200                  # boosting rounds at most; early stopping on val usually stops far sooner
EARLY_STOP = 20                  # rounds without a better val multi_logloss
ONNX_ATOL = 1e-5                 # ORT vs LightGBM probabilities
ONNX_OPSET = 17                  # ai.onnx; the tree node itself is ai.onnx.ml 1 (every ORT has it)
ONNX_IR = 8                      # the IR of opset 17, so older device runtimes (ORT >= 1.13) load it

COST_NOTES = {
    "input_stats": "one pass over the input: O(pixels) for images, O(1) for text (token count); "
                   "needs the raw input, so it is timed on the device, not here",
    "confidence": "one softmax over the first exit's logits: O(classes)",
    "projected": "the first exit's pooled vector times the (width, P) projection: O(width * P)",
}


def fit_projection(first_pooled_train: np.ndarray, dims: int = 8) -> np.ndarray:
    """PCA directions of the training split's first-exit pooled vectors.

    Args:
        first_pooled_train: (N, width) training split's first_pooled.
        dims: P, the number of directions kept.
    Returns:
        (width, P) float32; features use `first_pooled @ P` uncentred (a constant shift, trees ignore it).
    """
    x = np.asarray(first_pooled_train, np.float64)
    if dims < 1 or dims > min(x.shape):
        raise EdgeError(f"projection | dims {dims} outside 1..{min(x.shape)} (samples {x.shape[0]}, "
                        f"width {x.shape[1]})", Exit.BAD_INPUT)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    vt = vt[:dims]
    # SVD signs are arbitrary: make each direction's largest entry positive so refits reproduce P
    sign = np.sign(vt[np.arange(dims), np.abs(vt).argmax(1)])
    return (vt * sign[:, None]).T.astype(np.float32)


def feature_names(dims: int) -> list:
    return ([f"input_stat_{i}" for i in range(INPUT_STATS)] + list(CONFIDENCE)
            + [f"proj_{i}" for i in range(dims)])


def table_features(table: ExitTable, projection: np.ndarray) -> np.ndarray:
    """(N, 3 + 3 + P) float32 controller features of a split, exactly as the device computes them."""
    if table.first_pooled.shape[1] != projection.shape[0]:
        raise EdgeError(f"projection | width {projection.shape[0]}, but the table's first_pooled has width "
                        f"{table.first_pooled.shape[1]}", Exit.BAD_INPUT)
    return controller_features(table.input_stats, table.confidence[:, 0], table.first_pooled @ projection)


def table_labels(table: ExitTable) -> np.ndarray:
    """(N,) the predictor's label: the stable depth (exit index)."""
    return stable_depths(table.preds, table.correct)


def _float32_splits(model: str) -> str:
    """Snap every split threshold down to a float32. LightGBM tests x <= t with t a double; ORT's tree
    node stores t as float32 rounded to nearest, which flips inputs that sit between the two (we saw
    0.01 differences on digits). For a float32 x, x <= t exactly when x <= the largest float32 not above
    t, so after snapping both sides take the same branch on every float32 input: LightGBM's own
    predictions do not change and the ONNX export matches them."""
    # tree_sizes holds each tree's byte length, which the new text changes; without it LightGBM
    # parses the trees in order (and writes fresh sizes when it saves)
    lines = [line for line in model.split("\n") if not line.startswith("tree_sizes=")]
    for i, line in enumerate(lines):
        if line.startswith("threshold="):
            t = np.array(line[len("threshold="):].split(), np.float64)
            with np.errstate(over="ignore"):
                f = t.astype(np.float32)
            f = np.where(f.astype(np.float64) > t, np.nextafter(f, np.float32(-np.inf)), f)
            f = np.clip(f, np.finfo(np.float32).min, np.finfo(np.float32).max)   # no 'inf' in the text
            lines[i] = "threshold=" + " ".join(repr(float(v)) for v in f)
    return "\n".join(lines)


@dataclass
class Predictor:
    booster: object                            # lightgbm.Booster, holding only the kept trees
    projection: np.ndarray                     # (width, P) float32
    num_exits: int                             # E
    meta: dict = field(default_factory=dict)   # params, best_iteration, majority class, label histogram

    @property
    def num_features(self) -> int:
        return INPUT_STATS + len(CONFIDENCE) + self.projection.shape[1]

    def features(self, table: ExitTable) -> np.ndarray:
        return table_features(table, self.projection)

    def proba(self, features: np.ndarray) -> np.ndarray:
        """(N, E) float32 LightGBM's probabilities over the exit each input needs, in exit order."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise EdgeError(f"features | shape {features.shape}, expected (N, {self.num_features})",
                            Exit.BAD_INPUT)
        return self.booster.predict(features).astype(np.float32)

    def scores(self, table: ExitTable) -> dict:
        """Argmax accuracy against the stable depth, within one exit, the majority-class rate, log loss."""
        labels, proba = table_labels(table), self.proba(self.features(table))
        guess = proba.argmax(1)
        # the argmax rarely beats the majority class on skewed depths; the log loss against the training
        # prior (add-one smoothed) says whether the distribution OneShot reads carries information
        hist = np.asarray(self.meta["train_label_histogram"], np.float64)
        prior = (hist + 1) / (hist.sum() + len(hist))
        return {"accuracy": float((guess == labels).mean()),
                "within_one": float((np.abs(guess - labels) <= 1).mean()),
                "majority_rate": float((labels == self.meta["majority_class"]).mean()),
                "log_loss": float(-np.log(np.clip(proba[np.arange(len(labels)), labels], 1e-15, None)).mean()),
                "prior_log_loss": float(-np.log(prior[labels]).mean()),
                "label_histogram": np.bincount(labels, minlength=self.num_exits).tolist()}

    def export_onnx(self, path) -> Path:
        """One TreeEnsembleClassifier: input `features` float32 (N, F), output `proba` float32 (N, E)."""
        import onnx
        from onnx import TensorProto, helper
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
        spec = [("features", FloatTensorType([None, self.num_features]))]
        converted = convert_lightgbm(self.booster, initial_types=spec, zipmap=False)
        # Keep the tree node alone: the converter adds a label branch declared with a wrong shape
        # (ORT warns on every run) and Identity nodes; the device wants the probabilities only.
        tree = next(n for n in converted.graph.node if n.op_type == "TreeEnsembleClassifier")
        node = helper.make_node("TreeEnsembleClassifier", ["features"], ["label", "proba"], domain="ai.onnx.ml")
        node.attribute.extend(tree.attribute)
        graph = helper.make_graph(
            [node], "complexity_predictor",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, self.num_features])],
            [helper.make_tensor_value_info("proba", TensorProto.FLOAT, [None, self.num_exits])])
        model = helper.make_model(graph, ir_version=ONNX_IR, producer_name="edge_model.controller.predictor",
                                  opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                 helper.make_opsetid("ai.onnx.ml", 1)])
        helper.set_model_props(model, {"feature_names": json.dumps(feature_names(self.projection.shape[1])),
                                       "num_exits": str(self.num_exits), "label": "stable depth"})
        onnx.checker.check_model(model)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, path)
        return path

    def onnx_check(self, path, features: np.ndarray) -> float:
        """Max abs difference between ORT's and LightGBM's probabilities; EdgeError above ONNX_ATOL."""
        features = np.asarray(features, np.float32)
        ort_proba = _session(path).run(["proba"], {"features": features})[0]
        diff = float(np.abs(ort_proba - self.proba(features)).max())
        if not diff <= ONNX_ATOL:
            raise EdgeError(f"{path} | ONNX Runtime differs from LightGBM by {diff:.3g} "
                            f"(> {ONNX_ATOL:g}) on {len(features)} inputs", Exit.CORRUPT)
        return diff

    def save(self, directory) -> Path:
        """predictor.txt (LightGBM text), predictor.npz (projection), predictor.json (metadata)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(out / "predictor.txt"))
        np.savez(out / "predictor.npz", projection=self.projection)
        write_json(out / "predictor.json", {"format": "edge-complexity-predictor", "version": 1,
                                             "num_exits": self.num_exits,
                                             "feature_names": feature_names(self.projection.shape[1]),
                                             **self.meta})
        return out

    @classmethod
    def load(cls, directory) -> "Predictor":
        import lightgbm as lgb
        d = Path(directory)
        for name in ("predictor.txt", "predictor.npz", "predictor.json"):
            if not (d / name).is_file():
                raise EdgeError(f"{d / name} | missing; fit the predictor first", Exit.NOT_FOUND)
        try:
            meta = json.loads((d / "predictor.json").read_text())
            with np.load(d / "predictor.npz") as z:
                projection = z["projection"]
            booster = lgb.Booster(model_file=str(d / "predictor.txt"))
            num_exits = int(meta["num_exits"])
        except (OSError, ValueError, KeyError, lgb.basic.LightGBMError) as err:
            raise EdgeError(f"{d} | corrupt predictor ({str(err).splitlines()[0]})", Exit.CORRUPT) from None
        meta = {k: v for k, v in meta.items() if k not in ("format", "version", "num_exits", "feature_names")}
        pred = cls(booster, projection, num_exits, meta)
        if booster.num_feature() != pred.num_features or booster.num_model_per_iteration() != num_exits:
            raise EdgeError(f"{d} | predictor.txt has {booster.num_feature()} features and "
                            f"{booster.num_model_per_iteration()} classes; the projection and predictor.json "
                            f"imply {pred.num_features} and {num_exits}", Exit.CORRUPT)
        return pred


def fit_predictor(train_table: ExitTable, val_table: ExitTable, projection: np.ndarray, seed: int = 0,
                  params: dict = None) -> Predictor:
    """Fit on the training split, early-stop on val (multi_logloss); deterministic for a given seed.

    Args:
        train_table, val_table: cached exits of the two splits.
        projection: (width, P) from fit_projection on the training split.
        seed: LightGBM's seed.
        params: LightGBM parameters over PARAMS (a preset's `predictor` entry).
    Returns:
        Predictor holding only the trees up to the best val iteration.
    """
    import lightgbm as lgb
    E = train_table.num_exits
    if E < 2 or val_table.num_exits != E:
        raise EdgeError(f"predictor | needs >= 2 exits, the same in train and val (train {E}, val "
                        f"{val_table.num_exits})", Exit.BAD_INPUT)
    names = feature_names(projection.shape[1])
    y_train, y_val = table_labels(train_table), table_labels(val_table)
    params = {**PARAMS, **(params or {}), "num_class": E, "seed": seed}
    train_set = lgb.Dataset(table_features(train_table, projection), y_train, feature_name=names,
                            params={"verbose": -1})
    val_set = lgb.Dataset(table_features(val_table, projection), y_val, reference=train_set)
    booster = lgb.train(params, train_set, num_boost_round=MAX_TREES, valid_sets=[val_set], valid_names=["val"],
                        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])
    best = booster.best_iteration or booster.current_iteration()
    # Keep the best trees only, with float32-exact splits, so LightGBM, the saved text and ONNX agree
    booster = lgb.Booster(model_str=_float32_splits(booster.model_to_string(num_iteration=best)))
    hist = np.bincount(y_train, minlength=E)
    meta = {"params": params, "max_trees": MAX_TREES, "early_stop": EARLY_STOP, "best_iteration": int(best),
            "label": "stable depth", "train_label_histogram": hist.tolist(), "majority_class": int(hist.argmax())}
    return Predictor(booster, projection.astype(np.float32), E, meta)


def _session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1    # what one device core gives the controller
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:         # ORT raises its own exception types for missing and malformed files
        raise EdgeError(f"{path} | ONNX Runtime cannot load it ({str(err).splitlines()[0]})", Exit.CORRUPT) from None


def _median_us(fn, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e3


def microseconds_per_sample(path, features: np.ndarray, batch: int = 1, repeats: int = 200) -> float:
    """Median ORT time per sample (one thread) over `repeats` calls of `batch` rows, after a warm-up.
    Includes session.run's Python overhead, which the device pays too."""
    session = _session(path)
    x = np.asarray(features, np.float32)
    x = np.ascontiguousarray(np.resize(x, (batch, x.shape[1])))   # repeats rows if the split is smaller
    return _median_us(lambda: session.run(["proba"], {"features": x}), repeats) / batch


def feature_microseconds(table: ExitTable, projection: np.ndarray, repeats: int = 200) -> dict:
    """numpy cost of the feature groups computable from the cache, one sample at a time."""
    from edge_runtime.core.features import confidence
    logits, pooled = table.logits[:1, 0], table.first_pooled[:1]
    return {"confidence": _median_us(lambda: confidence(logits), repeats),
            "projected": _median_us(lambda: pooled @ projection, repeats)}


def predictor_report(pred: Predictor, val_table: ExitTable, test_table: ExitTable, projection: np.ndarray,
                     onnx_path, repeats: int = 200) -> dict:
    """Scores on val and test, the ONNX export checked against LightGBM, and what it costs per sample.

    Args:
        pred: a fitted or loaded Predictor.
        val_table, test_table: cached exits of the two held-out splits.
        projection: the projection the features use (normally pred.projection).
        onnx_path: where the ONNX export is written.
        repeats: timed calls per measurement.
    """
    if not np.array_equal(projection, pred.projection):
        raise EdgeError("projection | differs from the one the predictor was fitted with", Exit.BAD_INPUT)
    path = pred.export_onnx(onnx_path)
    val_x, test_x = table_features(val_table, projection), table_features(test_table, projection)
    dims, width = projection.shape[1], projection.shape[0]
    return {
        "label": "stable depth",
        "num_exits": pred.num_exits,
        "best_iteration": pred.meta.get("best_iteration"),
        "val": pred.scores(val_table),
        "test": pred.scores(test_table),
        "onnx_path": str(path),
        "onnx_max_abs_diff": pred.onnx_check(path, np.concatenate([val_x, test_x])),
        "onnx_us_per_sample_batch1": microseconds_per_sample(path, test_x, 1, repeats),
        "onnx_us_per_sample_batch256": microseconds_per_sample(path, test_x, 256, max(10, repeats // 10)),
        "num_features": pred.num_features,
        "feature_names": feature_names(dims),
        "feature_groups": {
            "input_stats": {"features": INPUT_STATS, "cost": COST_NOTES["input_stats"]},
            "confidence": {"features": len(CONFIDENCE), "cost": COST_NOTES["confidence"]},
            "projected": {"features": dims, "cost": COST_NOTES["projected"],
                          "flops": 2 * width * dims},
        },
        "feature_us_per_sample_numpy": feature_microseconds(test_table, projection, repeats),
    }
