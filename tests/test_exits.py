"""Oracle depth, stable depth and the FLOPs lower bound on exit tables small enough to check by hand."""
import itertools
import json

import numpy as np
import pytest

from conftest import run_cli
from edge_model.exits import lower_bound_curve, oracle_depths, oracle_report, stable_depths
from edge_runtime.core.errors import Exit

# 6 inputs, 3 exits costing 10, 20, 40, 2 classes.
PREDS = np.array([[0, 0, 0],     # y=0 right everywhere                 l* 0, stable 0
                  [0, 1, 1],     # y=1 right from exit 1                l* 1, stable 1
                  [0, 1, 0],     # y=0 right at 0, wobbles, right at 2  l* 0, stable 2
                  [0, 0, 1],     # y=1 right at the last exit only      l* 2, stable 2
                  [0, 0, 0],     # y=1 never right                      l* 0, stable 0
                  [1, 0, 1]])    # y=0 right at exit 1 only             l* 1, stable 0 (last is wrong)
Y = np.array([0, 1, 0, 1, 1, 0])
FLOPS = np.array([10.0, 20.0, 40.0])


def logits_of(preds, classes=2):
    """Logits whose argmax is `preds`, with uneven margins so nothing depends on ties."""
    rng = np.random.default_rng(0)
    out = rng.normal(0, 0.1, preds.shape + (classes,)).astype(np.float32)
    np.put_along_axis(out, preds[..., None], 2.0 + rng.random(preds.shape + (1,)), -1)
    return out


def test_oracle_and_stable_depths_by_hand():
    correct = PREDS == Y[:, None]
    assert oracle_depths(correct).tolist() == [0, 1, 0, 2, 0, 1]
    assert stable_depths(PREDS, correct).tolist() == [0, 1, 2, 2, 0, 0]


def test_lower_bound_curve_by_hand():
    levels, curve = lower_bound_curve(PREDS == Y[:, None], FLOPS)
    # solvable: 5 inputs, extra cost above exit 0 sorted: 0, 0, 10, 10, 30; everyone pays 10
    np.testing.assert_allclose(levels, np.arange(6) / 6)
    np.testing.assert_allclose(curve, np.array([60, 60, 60, 70, 80, 110]) / 6)


def test_oracle_report_by_hand():
    r = oracle_report(logits_of(PREDS), Y, FLOPS, (1, 2, 4))
    assert r["samples"] == 6 and r["exits"] == [1, 2, 4]
    assert r["exit_accuracy"] == pytest.approx([2 / 6, 3 / 6, 4 / 6])   # exit 1 is right on inputs 0, 1, 5
    assert r["oracle_accuracy"] == pytest.approx(5 / 6)
    assert r["oracle_mean_flops"] == pytest.approx((10 + 20 + 10 + 40 + 10 + 20) / 6)
    assert r["oracle_depth_histogram"] == [3, 2, 1]
    assert r["stable_depth_histogram"] == [3, 1, 2]
    assert r["full_depth_accuracy"] == pytest.approx(4 / 6)
    lb = r["lower_bound_at_full_accuracy"]
    # four right answers at least cost: 10 + 10 + 20 + 20 for the cheapest four, 10 for the other two
    assert lb["mean_flops"] == pytest.approx(80 / 6)
    assert lb["fraction_of_full"] == pytest.approx(80 / 6 / 40)
    assert lb["flops_reduction"] == pytest.approx(1 - 80 / 6 / 40)
    json.dumps(r)   # the report is plain JSON


def brute_force_bound(correct, flops):
    """Least mean FLOPs over every per-input choice of exit, for each number of right answers."""
    n, e = correct.shape
    best = {}
    for choice in itertools.product(range(e), repeat=n):
        right = int(sum(correct[i, c] for i, c in enumerate(choice)))
        cost = float(np.mean(flops[list(choice)]))
        for m in range(right + 1):   # right on m or more
            best[m] = min(best.get(m, np.inf), cost)
    return [best[m] for m in sorted(best)]


@pytest.mark.parametrize("seed", range(6))
def test_lower_bound_is_the_true_minimum_and_monotone(seed):
    rng = np.random.default_rng(seed)
    correct = rng.random((6, 3)) < rng.uniform(0.2, 0.7)
    flops = np.cumsum(rng.integers(1, 20, 3)).astype(np.float64)
    levels, curve = lower_bound_curve(correct, flops)
    assert np.all(np.diff(curve) >= 0) and np.all(np.diff(levels) > 0)
    assert curve[0] == flops[0]
    assert levels[-1] == pytest.approx(correct.any(1).mean())
    assert curve[-1] == pytest.approx(flops[oracle_depths(correct)].mean())
    np.testing.assert_allclose(curve, brute_force_bound(correct, flops))


def test_cache_exits_cli_matches_eval(digits_ckpt, tmp_path):
    out, report = tmp_path / "cache", tmp_path / "eval"
    _, err, code = run_cli("cache-exits", "--checkpoint", digits_ckpt, "--out", out)
    assert code == Exit.OK, err
    _, err, code = run_cli("eval", "--checkpoint", digits_ckpt, "--report", report)
    assert code == Exit.OK, err
    oracle = json.loads((out / "oracle.json").read_text())
    ev = json.loads((report / "eval.json").read_text())
    assert set(oracle["splits"]) == {"train", "val", "test"}
    sizes = {"train": 1257, "val": 270, "test": 270}
    for split, n in sizes.items():
        z = np.load(out / f"exits_{split}.npz")
        assert z["logits"].shape == (n, 4, 10) and z["labels"].shape == (n,)
        assert z["exits"].tolist() == [1, 2, 3, 4] and z["flops"].tolist() == ev["flops"]
        r = oracle["splits"][split]
        acc = (z["logits"].argmax(-1) == z["labels"][:, None]).mean(0)
        assert r["exit_accuracy"] == pytest.approx(acc.tolist())
        assert r["oracle_accuracy"] >= r["full_depth_accuracy"]
        assert r["lower_bound_at_full_accuracy"]["mean_flops"] <= r["flops"][-1]
    for split in ("val", "test"):
        assert oracle["splits"][split]["full_depth_accuracy"] == pytest.approx(ev["accuracy"][split][-1], abs=1e-12)
        assert oracle["splits"][split]["exit_accuracy"] == pytest.approx(ev["accuracy"][split], abs=1e-12)
    assert (out / "oracle.md").read_text().startswith("# Oracle and lower bound: digits-vit-tiny")
    assert not list(digits_ckpt.glob("exits_*.npz"))   # --out kept the shared checkpoint untouched
