"""The level-1 complexity predictor on synthetic exit tables whose required depth follows a hidden
difficulty, which leaks into the input statistics, the first exit's confidence and its pooled vector."""
import json

import numpy as np
import pytest

from edge_model.controller.predictor import (Predictor, feature_names, fit_predictor, fit_projection,
                                             microseconds_per_sample, predictor_report, table_features,
                                             table_labels)
from edge_model.controller.table import ExitTable
from edge_runtime.core.errors import EdgeError, Exit

E, C, WIDTH, DIMS = 4, 5, 16, 4


def synthetic_table(n: int, seed: int, deepest: int = E - 1) -> ExitTable:
    """Exit k is right iff k >= need, need = floor(difficulty * E) capped at `deepest`, so the stable
    depth is `need`; wrong exits name a random wrong class. Confidence falls with difficulty."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    need = np.minimum((difficulty * E).astype(int), deepest)
    labels = rng.integers(0, C, n)
    wrong = (labels[:, None] + rng.integers(1, C, (n, E))) % C
    preds = np.where(np.arange(E)[None] >= need[:, None], labels[:, None], wrong)     # (N, E)
    logits = rng.normal(0, 0.3, (n, E, C)).astype(np.float32)
    np.put_along_axis(logits, preds[..., None], (1 + 20 * (1 - difficulty))[:, None, None], -1)
    pooled = rng.normal(0, 1, (n, WIDTH)).astype(np.float32)
    pooled[:, 0] += 2 * difficulty
    stats = np.stack([difficulty + rng.normal(0, 0.1, n), rng.normal(0, 1, n), rng.random(n)], -1)
    flops = np.array([1.0, 2.0, 3.0, 4.0])
    return ExitTable(logits, labels, np.arange(1, E + 1), flops, 0.1, pooled, stats.astype(np.float32))


@pytest.fixture(scope="module")
def fitted():
    train, val, test = synthetic_table(600, 0), synthetic_table(300, 1), synthetic_table(300, 2)
    projection = fit_projection(train.first_pooled, DIMS)
    return {"train": train, "val": val, "test": test, "projection": projection,
            "pred": fit_predictor(train, val, projection, seed=0)}


def test_labels_are_the_hidden_depth():
    table = synthetic_table(50, 3)
    assert set(table_labels(table)) <= set(range(E))
    assert (table.correct[np.arange(50), table_labels(table)]).all()


def test_projection_shape_orthonormal_and_deterministic():
    pooled = synthetic_table(200, 4).first_pooled
    p = fit_projection(pooled, DIMS)
    assert p.shape == (WIDTH, DIMS) and p.dtype == np.float32
    np.testing.assert_allclose(p.T @ p, np.eye(DIMS), atol=1e-5)
    assert np.array_equal(p, fit_projection(pooled.copy(), DIMS))
    assert (p[np.abs(p).argmax(0), np.arange(DIMS)] > 0).all()       # the sign convention
    with pytest.raises(EdgeError) as err:
        fit_projection(pooled, WIDTH + 1)
    assert err.value.exit == Exit.BAD_INPUT and str(err.value).startswith("projection | dims")


def test_features_and_width_mismatch(fitted):
    x = table_features(fitted["test"], fitted["projection"])
    assert x.shape == (300, 6 + DIMS) and x.dtype == np.float32
    assert len(feature_names(DIMS)) == x.shape[1]
    with pytest.raises(EdgeError, match=r"^projection \| width"):
        table_features(fitted["test"], np.zeros((WIDTH + 1, DIMS), np.float32))


def test_proba_has_every_exit_and_sums_to_one(fitted):
    proba = fitted["pred"].proba(table_features(fitted["test"], fitted["projection"]))
    assert proba.shape == (300, E) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)


def test_beats_the_majority_class_on_held_out_data(fitted):
    scores = fitted["pred"].scores(fitted["test"])
    assert scores["accuracy"] > scores["majority_rate"] + 0.2
    assert scores["within_one"] >= scores["accuracy"]
    assert scores["log_loss"] < scores["prior_log_loss"]


def test_fit_is_deterministic(fitted):
    again = fit_predictor(fitted["train"], fitted["val"], fitted["projection"], seed=0)
    x = table_features(fitted["test"], fitted["projection"])
    assert np.array_equal(again.proba(x), fitted["pred"].proba(x))


def test_onnx_runtime_matches_lightgbm(fitted, tmp_path):
    import onnx
    pred = fitted["pred"]
    path = pred.export_onnx(tmp_path / "predictor.onnx")
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["features"] and [o.name for o in model.graph.output] == ["proba"]
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    # the training split is the hard case: its values sit next to the split thresholds
    for split in ("train", "test"):
        assert pred.onnx_check(path, table_features(fitted[split], fitted["projection"])) <= 1e-5


def test_onnx_check_names_the_file_on_mismatch(fitted, tmp_path):
    other = fit_predictor(fitted["test"], fitted["val"], fitted["projection"])   # another model, same shape
    path = other.export_onnx(tmp_path / "other.onnx")
    with pytest.raises(EdgeError) as err:
        fitted["pred"].onnx_check(path, table_features(fitted["val"], fitted["projection"]))
    assert err.value.exit == Exit.CORRUPT and str(err.value).startswith(f"{path} | ONNX Runtime differs")


def test_save_load_round_trip(fitted, tmp_path):
    pred = fitted["pred"]
    pred.save(tmp_path / "pred")
    again = Predictor.load(tmp_path / "pred")
    x = table_features(fitted["test"], fitted["projection"])
    assert np.array_equal(again.proba(x), pred.proba(x))
    assert np.array_equal(again.projection, pred.projection) and again.num_exits == E
    assert json.loads(json.dumps(pred.meta)) == again.meta
    assert not list((tmp_path / "pred").glob("*.pkl"))


def test_load_errors_are_one_line(fitted, tmp_path):
    with pytest.raises(EdgeError) as err:
        Predictor.load(tmp_path / "nowhere")
    assert err.value.exit == Exit.NOT_FOUND
    fitted["pred"].save(tmp_path / "pred")
    (tmp_path / "pred" / "predictor.json").write_text("{ not json")
    with pytest.raises(EdgeError) as err:
        Predictor.load(tmp_path / "pred")
    assert err.value.exit == Exit.CORRUPT and "\n" not in str(err.value)


def test_an_exit_absent_from_training_keeps_its_column(fitted, tmp_path):
    train = synthetic_table(600, 5, deepest=E - 2)                  # nobody needs the last exit
    assert table_labels(train).max() == E - 2
    pred = fit_predictor(train, fitted["val"], fitted["projection"])
    x = table_features(fitted["test"], fitted["projection"])
    proba = pred.proba(x)
    assert proba.shape == (300, E) and proba[:, -1].max() < 1e-3
    assert pred.onnx_check(pred.export_onnx(tmp_path / "p.onnx"), x) <= 1e-5


def test_report(fitted, tmp_path):
    report = predictor_report(fitted["pred"], fitted["val"], fitted["test"], fitted["projection"],
                              tmp_path / "predictor.onnx", repeats=5)
    assert report["onnx_max_abs_diff"] <= 1e-5
    assert report["num_features"] == len(report["feature_names"]) == 6 + DIMS
    assert report["onnx_us_per_sample_batch1"] > 0 and report["onnx_us_per_sample_batch256"] > 0
    assert set(report["feature_groups"]) == {"input_stats", "confidence", "projected"}
    assert {"accuracy", "within_one"} <= set(report["val"]) and {"accuracy", "within_one"} <= set(report["test"])
    json.dumps(report)                                              # plain JSON types only
    assert microseconds_per_sample(tmp_path / "predictor.onnx", np.zeros((1, 6 + DIMS), np.float32),
                                   batch=4, repeats=3) > 0
