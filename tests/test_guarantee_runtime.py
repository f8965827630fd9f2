"""The guarantee as a budget of the runtime: --max-disagreement / --confidence, the certified lambda from the
engine directory's calibration counts, its composition with a deadline, and the live guard fed by shadow
frames (on an i.i.d. stream it rarely steps; on a drifted one it steps in, and the disagreement after is
back under epsilon)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_infer
from edge_runtime.core.budget import Budget, Certified, Curve, Spend, fraction
from edge_runtime.core.controller import Mode
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.runtime import Runtime

GOLDEN = Path("tests/golden/digits-vit-tiny")
CAL = {"values": [0.001, 0.01, 0.1, 1.0], "disagreement": [0, 1, 4, 40]}


def test_fractions_and_budget_rules():
    assert fraction("0.5%", "x") == pytest.approx(0.005) and fraction(0.02, "x") == 0.02
    assert fraction("90 %", "x") == pytest.approx(0.9)
    for bad in ("0", "1", "150%", "abc", "-1%", "nan"):
        with pytest.raises(EdgeError):
            fraction(bad, "--max-disagreement")
    b = Budget.of(None, None, "1%")
    assert b.max_disagreement == pytest.approx(0.01) and b.confidence == pytest.approx(0.9)
    assert "probability >= 90 %" in b.describe()
    with pytest.raises(EdgeError, match="give one"):
        Budget.of(0.1, None, "1%")
    with pytest.raises(EdgeError, match="goes with"):
        Budget.of(None, None, None, "90%")
    assert Budget.of(None, 5.0, "1%").deadline_ms == 5.0          # a deadline composes with a guarantee


def test_certified_serves_the_last_lambda_learn_then_test_rejects():
    c = Certified("progressive", CAL, 1000, 0.01, 0.1)
    # 0 and 1 of 1000 are clearly under 1 %; 4 of 1000 is too (HB p ~ 0.02); 40 of 1000 is not
    assert c.index == 2 and c.lam == 0.1
    assert c.cap(1.0) == 0.1 and c.cap(0.05) == 0.01 and c.cap(0.0) == 0.001   # only certified lambdas
    tight = Certified("progressive", CAL, 1000, 0.0005, 0.1)
    assert tight.index == -1 and tight.lam is None and tight.cap(1.0) is None    # none: full depth
    with pytest.raises(EdgeError, match="increasing"):
        Certified("progressive", {"values": [0.1, 0.01], "disagreement": [0, 0]}, 10, 0.1, 0.1)


def test_the_guard_steps_toward_full_depth_and_says_so():
    c = Certified("progressive", CAL, 1000, 0.01, 0.1)
    steps = [c.observe(True) for _ in range(2000)]
    done = [s for s in steps if s is not None]
    # every frame differs: a drift of 250x this knob's calibration rate, so only the 0-count knob fits, then
    # nothing does
    assert [(s["from"], s["to"]) for s in done] == [(0.1, 0.001), (0.001, None)]
    assert all(s["lower"] > 0.01 for s in done) and c.lam is None
    r = c.report()
    assert len(r["steps"]) == 2 and r["lambda_now"] is None and r["certified_lambda"] == 0.1
    assert c.observe(True) is None                       # at full depth there is nothing left to guard


def test_the_guarantee_wins_over_a_deadline_and_counts_the_calls_it_costs():
    curve = {"progressive": Curve([{"lambda": 0.001, "mean_ms": 3.0}, {"lambda": 0.1, "mean_ms": 2.0},
                                   {"lambda": 1.0, "mean_ms": 1.0}])}
    points = {"progressive": {"lambda": 0.1}, "oneshot": {"lambda": 0.1}}
    cal = {"n": 1000, "modes": {"progressive": CAL, "oneshot": CAL}}
    spend = Spend(Budget.of(None, 1.5, "1%"), points, curve, "test", cal)
    mode = Mode("progressive")
    assert spend.lam(mode) == 0.1                        # the deadline asked for 1.0: capped, and 2 ms > 1.5
    assert spend.guarantee(mode).over_deadline == 1
    assert spend.lam(mode, spent_ms=-1.0) == 0.1         # 2.5 ms left: 0.1 fits, nothing counted
    assert spend.guarantee(mode).over_deadline == 1
    with pytest.raises(EdgeError, match="no calibration counts"):
        Spend(Budget.of(None, None, "1%"), points, {}, "test", None)


def golden_with_calibration():
    m = json.loads((GOLDEN / "manifest.json").read_text())
    if "calibration" not in m["controller"]:
        pytest.skip("the golden engine directory carries no calibration counts yet")
    return m["controller"]["calibration"]


def test_runtime_serves_the_certified_lambda_or_full_depth():
    cal = golden_with_calibration()
    n = cal["n"]
    with Runtime.open(GOLDEN, max_disagreement="20%", confidence="90%") as rt:
        c = rt.spend.guarantee(rt.mode)
        assert c is not None and "guaranteed" in rt.describe()
        if c.lam is not None:
            assert rt.spend.lam(rt.mode) == c.lam
        assert rt.stats()["guarantee"]["max_disagreement"] == pytest.approx(0.2)
    # an epsilon no count of n inputs can certify: every input runs at full depth
    with Runtime.open(GOLDEN, max_disagreement=0.1 / n, mode="oneshot") as rt:
        assert rt.spend.guarantee(rt.mode).lam is None and "full depth" in rt.describe()
        x = rt.engine.reference()["pixels"]
        out = rt.run({"pixels": x})
        assert (out.exit_index == len(rt.depths) - 1).all()


def test_the_cli_states_the_guarantee_and_refuses_bad_values(tmp_path):
    golden_with_calibration()
    out, err, code = run_infer("dataset://digits/test", "--engine-dir", GOLDEN, "--headless", "--quiet",
                               "--max-frames", "60", "--max-disagreement", "20%", "--shadow", "1",
                               "--telemetry", "none", "--summary-every", "0")
    assert code == Exit.OK, err
    assert "guaranteed: disagreement with full depth <= 20 %" in out and "guarantee   progressive" in out
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", GOLDEN, "--headless",
                                    "--max-disagreement", "2"), Exit.BAD_INPUT, "edge-infer", "--max-disagreement 2")


def stream_differs(rt, images: np.ndarray, cal: dict) -> np.ndarray:
    """(knobs, N) bool: whether progressive at each calibration lambda answers differently from full depth,
    from the runtime itself."""
    feed = rt.preprocess.batch(list(images))
    full = rt.run(feed, mode=rt.full).logits.argmax(1)
    return np.stack([rt.run(feed, budget=lam, mode="progressive").logits.argmax(1) != full
                     for lam in cal["modes"]["progressive"]["values"]])


@pytest.fixture(scope="module")
def digits_streams():
    cal = golden_with_calibration()
    from edge_runtime.io.datasets import image_split
    x, _, _ = image_split("digits", "test")
    with Runtime.open(GOLDEN) as rt:
        clean = stream_differs(rt, x, cal)
        # drift: the same digits in inverted contrast, with noise (what the calibration split never showed)
        rng = np.random.default_rng(0)
        shifted = np.clip(255.0 - x + rng.normal(0, 40, x.shape), 0, 255).astype(x.dtype)
        drifted = stream_differs(rt, shifted, cal)
    return cal, clean, drifted


def run_guard(cal, eps, delta, differs, frames, rng):
    """A stream of `frames` shadow frames drawn i.i.d. from `differs` rows at the knob served now."""
    c = Certified("progressive", cal["modes"]["progressive"], cal["n"], eps, delta)
    first = None
    for t in range(frames):
        if c.lam is None:
            break
        if c.observe(bool(differs[c.index][rng.integers(differs.shape[1])])) is not None and first is None:
            first = t + 1
    return c, first


def test_on_an_iid_stream_the_guard_rarely_steps(digits_streams):
    cal, clean, _ = digits_streams
    delta = 0.1
    # an epsilon whose certified knob really is within it on the test split (else stepping is right)
    for eps in (0.05, 0.1, 0.2, 0.3):
        c = Certified("progressive", cal["modes"]["progressive"], cal["n"], eps, delta)
        if c.index >= 0 and clean[c.index].mean() <= 0.8 * eps:
            break
    else:
        pytest.fail("no epsilon certifies a knob that holds on the digits test split")
    rng = np.random.default_rng(1)
    runs = 200
    stepped = sum(run_guard(cal, eps, delta, clean, 2000, rng)[1] is not None for _ in range(runs))
    assert stepped / runs <= delta + 3 * np.sqrt(delta * (1 - delta) / runs), (eps, stepped)


def test_on_a_drifted_stream_the_guard_steps_in_and_holds_epsilon_after(digits_streams):
    cal, clean, drifted = digits_streams
    eps, delta = 0.1, 0.1
    c0 = Certified("progressive", cal["modes"]["progressive"], cal["n"], eps, delta)
    if c0.index < 0:
        pytest.skip("nothing certified at this epsilon on the golden calibration")
    assert drifted[c0.index].mean() > 2 * eps, "the drift does not move the disagreement: no test of the guard"
    rng = np.random.default_rng(2)
    for _ in range(20):
        c, first = run_guard(cal, eps, delta, drifted, 20000, rng)
        assert first is not None and first <= 500            # steps in within a few hundred shadow frames
        after = 0.0 if c.lam is None else drifted[c.index].mean()
        assert after <= eps, (c.lam, after)                   # the knob it ends on holds epsilon on the drift
