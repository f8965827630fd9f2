"""The controller report's protocol and numbers on exit tables small enough to check by hand."""
import json

import numpy as np
import pytest

from edge_model.controller.methods import Fixed, Patience
from edge_model.controller.report import (Family, cheapest_fixed_reaching, choose_on_val, controller_report,
                                          flops_at_accuracy, lower_bound_at, standard_families, write_report)
from edge_model.controller.table import ExitTable

# Every label is 0, so a row of the matrix is "exit k is right"; 3 exits at layers 1, 2, 4.
FLOPS, HEAD = np.array([10.0, 20.0, 40.0]), 1.0     # progressive costs: 10, 21, 42
VAL = np.array([[1, 1, 1]] * 6 + [[0, 1, 1]] * 3 + [[0, 0, 0]])          # exits right: 0.6, 0.9, 0.9
TEST = np.array([[1, 1, 1]] * 5 + [[1, 0, 1]] * 2 + [[0, 1, 1], [0, 1, 0], [0, 0, 0]])   # 0.7, 0.7, 0.8


def table_of(correct: np.ndarray) -> ExitTable:
    """Logits whose argmax is 0 where `correct`, with uneven margins so nothing depends on ties."""
    n, e = correct.shape
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 0.1, (n, e, 2)).astype(np.float32)
    np.put_along_axis(logits, (1 - correct)[..., None], 2.0 + rng.random((n, e, 1)), -1)
    return ExitTable(logits, np.zeros(n, np.int64), np.array([1, 2, 4]), FLOPS, HEAD, np.zeros((n, 4), np.float32),
                     np.zeros((n, 3), np.float32))


def point(flops, acc, knob=None):
    return {"knob": knob, "accuracy": acc, "mean_flops": flops, "flops_fraction": flops / 40, "depth_histogram": []}


def test_choose_on_val_cheapest_inside_the_margin_else_most_accurate():
    points = [point(10, 0.790, "a"), point(25, 0.800, "b"), point(20, 0.797, "c"), point(30, 0.810, "d"),
              point(20, 0.796, "e"), point(22, 0.799, "f")]
    assert choose_on_val(points, 0.800)["knob"] == "f"          # 0.3 budget less 0.2 margin: exactly 0.1 below
    assert choose_on_val(points, 0.800, margin=0.0)["knob"] == "c"   # exactly 0.3 points below counts as within
    assert choose_on_val(points, 0.800, tolerance=0.005)["knob"] == "c"
    assert choose_on_val(points, 0.800, tolerance=0.0, margin=0.0)["knob"] == "b"
    assert choose_on_val(points, 0.900)["knob"] == "d"          # nothing close enough: the most accurate


def test_flops_at_accuracy_on_the_pareto_frontier():
    # frontier: (10, .80), (20, .85), (30, .90); the others are dominated
    curve = [point(15, 0.79), point(30, 0.90), point(10, 0.80), point(25, 0.84), point(20, 0.85), point(40, 0.89)]
    assert flops_at_accuracy(curve, 0.875) == pytest.approx(25.0)       # halfway from (20, .85) to (30, .90)
    assert flops_at_accuracy(curve, 0.875, interpolate=False) == 30.0
    assert flops_at_accuracy(curve, 0.85) == 20.0
    assert flops_at_accuracy(curve, 0.50) == 10.0
    assert flops_at_accuracy(curve, 0.95) is None
    fixed = [point(10, 0.80, 0), point(20, 0.85, 1), point(40, 0.84, 2)]
    assert cheapest_fixed_reaching(fixed, 0.84)["knob"] == 1
    assert cheapest_fixed_reaching(fixed, 0.86) is None


def test_lower_bound_at_by_hand():
    # solvable test rows: 7 right at exit 0, 2 first right at exit 1 (10 FLOPs more); the last never
    assert lower_bound_at(table_of(TEST), 0.7) == pytest.approx(10.0)
    assert lower_bound_at(table_of(TEST), 0.8) == pytest.approx(11.0)
    assert lower_bound_at(table_of(TEST), 0.95) is None


def hand_report(policy=True):
    families = [Family("fixed", Fixed, [0, 1, 2]), Family("patience", Patience, [1, 2])]
    return controller_report(table_of(VAL), table_of(TEST), families,
                             policy_family=Family("policy", Fixed, [0, 1, 2]) if policy else None)


def test_headline_for_a_fixed_depth_policy_by_hand():
    r = hand_report()
    assert r["main"] == "policy" and list(r["headline"])[0] == "policy"
    # val full depth 0.9: exit 1 is the cheapest within 0.1 points (the budget less the margin). On test exit 0
    # would do as well for half the FLOPs, but nothing is tuned on test.
    assert r["families"]["policy"]["chosen"]["knob"] == 1
    h = r["headline"]["policy"]
    assert h["accuracy"] == pytest.approx(0.7) and h["val_accuracy"] == pytest.approx(0.9)
    assert h["accuracy_change_points"] == pytest.approx(-10.0)
    assert h["mean_flops"] == pytest.approx(20.0)
    assert h["flops_reduction"] == pytest.approx(0.5)
    assert h["cheapest_fixed"]["exit"] == 0 and h["cheapest_fixed"]["layer"] == 1
    assert h["fixed_over_method"] == pytest.approx(0.5)
    # patience 1 on test stops rows at exits 1,1,1,1,1,2,2,2,2,1: right on 8, (6 * 21 + 4 * 42) / 10 FLOPs
    assert h["best_threshold"] == "patience"
    assert h["best_threshold_flops"] == pytest.approx(29.4)
    assert h["best_threshold_over_method"] == pytest.approx(29.4 / 20)
    assert h["lower_bound_flops"] == pytest.approx(10.0)
    assert h["method_over_lower_bound"] == pytest.approx(2.0)
    assert h["depth_histogram"] == [0, 10, 0]
    assert r["random"]["test"]["knob"] == pytest.approx(0.5)          # matched to the policy's test cost
    # 1.3x the lower bound is 13 FLOPs: fixed exit 0 (10 FLOPs, 0.7) fits, no patience knob does
    assert r["near_bound"]["mean_flops"] == pytest.approx(13.0)
    assert r["near_bound"]["accuracy"] == {"fixed": pytest.approx(0.7), "patience": None,
                                           "policy": pytest.approx(0.7)}


def test_best_baseline_is_chosen_on_val():
    # val-chosen points: fixed exit 1 (0.9, 20 FLOPs), patience 1 (0.9, 27.3 FLOPs)
    r = hand_report(policy=False)
    assert r["families"]["patience"]["chosen"]["val"]["mean_flops"] == pytest.approx(27.3)
    assert r["main"] == "fixed"
    assert r["headline"]["patience"]["best_threshold"] is None       # a threshold family is not its own baseline


def test_report_writes_json_markdown_and_plots(tmp_path):
    val, test = table_of(VAL), table_of(TEST)
    proba = np.random.default_rng(1).dirichlet(np.ones(3), len(VAL)).astype(np.float32)
    families = standard_families(val, proba, predictor_flops=0.5)
    assert [f.name for f in families] == ["fixed", "entropy", "maxprob", "patience", "predictor", "oneshot", "oracle"]
    r = controller_report(val, test, families, proba, proba[::-1].copy())
    drawn = []
    out = write_report(r, tmp_path / "rep", extra_plots=[("extra", lambda rep, ax: drawn.append(ax.plot([0, 1])))])
    assert json.loads((out / "controller.json").read_text())["main"] == r["main"]
    md = (out / "controller.md").read_text()
    assert "chosen on the validation split" in md and f"**{r['main']}**" in md and "| oneshot |" in md
    assert "## Within 1.3x the lower bound" in md
    for name in ("accuracy_vs_flops.png", "depth_histogram.png", "extra.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert drawn and not list(out.glob("*.tmp"))
