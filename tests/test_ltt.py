"""Learn then Test on the workstation: the knob orders, the fixed-sequence walk, the guarantee by simulation,
the report's rows, and the calibration counts an engine directory carries."""
import copy
import json

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli, run_infer
from edge_model.controller import ltt
from edge_model.controller.fit import LAMBDAS, calibration, load_tables
from edge_model.controller.methods import Fixed, OneShot, Patience, PredictorOnly, Threshold, run
from edge_model.controller.predictor import Predictor
from edge_model.controller.report import Family, standard_families
from edge_model.controller.table import ExitTable
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.guarantee import pvalue
from edge_runtime.core.manifest import validate


def random_table(n=300, e=4, c=5, seed=0) -> tuple:
    """A table whose exits get surer with depth, and a predictor distribution: (table, proba)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, e, c)).astype(np.float32)
    logits[np.arange(n), :, labels] += np.linspace(0.5, 3, e)[None].astype(np.float32)
    proba = rng.dirichlet(np.ones(e), n).astype(np.float32)
    flops = np.linspace(10, 40, e)
    table = ExitTable(logits, labels, np.arange(1, e + 1), flops, 1.0, np.zeros((n, 4), np.float32),
                      np.zeros((n, 3), np.float32))
    return table, proba


def point(k, n=1000, new_error=0):
    return {"knob": k, "disagreement": k, "new_error": new_error, "n": n}


# ---- the orders ----

@pytest.mark.parametrize("name, make, knobs", [
    ("fixed", Fixed, [0, 1, 2, 3]),
    ("patience", Patience, [1, 2, 3]),
    ("maxprob", lambda t: Threshold("maxprob", t), ltt.GRIDS["maxprob"]),
    ("entropy", lambda t: Threshold("entropy", t), ltt.GRIDS["entropy"]),
    ("predictor", PredictorOnly, ltt.GRIDS["predictor"]),
    ("oneshot", OneShot, [0.0, 0.3, 0.01, 2.0, 0.1, 30.0]),
])
def test_every_input_stops_no_deeper_along_the_conservative_order(name, make, knobs):
    # Each of these methods is monotone per input in its knob, so the order must be: the conservative knob
    # first, every later knob stopping each input at the same exit or a shallower one.
    table, proba = random_table()
    family = ltt.ordered(Family(name, make, list(knobs)))
    stops = np.stack([run(family.make(k), table, proba) for k in family.knobs])
    assert (np.diff(stops, axis=0) <= 0).all()
    assert stops[0].mean() > stops[-1].mean()        # and the order does move something


def test_order_directions_by_hand():
    assert ltt.conservative_order("fixed", [0, 2, 1]) == [1, 2, 0]
    assert ltt.conservative_order("policy", [0.5, 0.0, 0.1]) == [1, 2, 0]
    assert ltt.conservative_order("policy_nopredictor", [0.5, 0.0]) == [1, 0]
    assert ltt.conservative_order("maxprob", [0.5, 0.99, 0.9]) == [1, 2, 0]
    assert ltt.conservative_order("entropy", [0.5, 0.01, 0.1]) == [1, 2, 0]
    assert ltt.GRIDS["maxprob"][0] == 1.0 and ltt.GRIDS["entropy"][0] == 0.0
    with pytest.raises(ValueError):
        ltt.direction("oracle")


# ---- the fixed-sequence walk ----

def test_the_walk_keeps_the_last_knob_of_the_rejected_prefix():
    # n = 1000, eps = 1 %: k = 3 is rejected by both p-values, k = 5 only by the exact binomial one
    assert pvalue(3, 1000, 0.01, "hb") <= 0.1 < pvalue(5, 1000, 0.01, "hb")
    assert pvalue(5, 1000, 0.01, "binomial") <= 0.1 < pvalue(40, 1000, 0.01, "binomial")
    points = [point(k) for k in (0, 1, 3, 5, 2, 40, 0)]
    assert ltt.ltt_choose(points, 0.01, 0.1, method="hb") is points[2]     # k = 2 after 5 is never reached
    assert ltt.ltt_choose(points, 0.01, 0.1, method="binomial") is points[4]
    assert ltt.ltt_choose([point(40), point(0)], 0.01, 0.1) is None        # the first fails: full depth
    assert ltt.ltt_choose([], 0.01, 0.1) is None
    # new-error reads its own counts
    labelled = [point(40, new_error=0), point(60, new_error=3)]
    assert ltt.ltt_choose(labelled, 0.01, 0.1, risk="new-error") is labelled[1]
    assert ltt.ltt_choose(labelled, 0.01, 0.1, risk="disagreement") is None


def test_levels_and_flags_parse_or_fail_in_one_line():
    assert ltt.parse_epsilons("0.25%,0.5%, 1%,2%") == pytest.approx([0.0025, 0.005, 0.01, 0.02])
    assert ltt.parse_epsilons("0.02,0.005") == pytest.approx([0.005, 0.02])
    from edge_runtime.core.budget import fraction
    assert fraction("10%", "--delta") == pytest.approx(0.1)
    for bad in ("abc", "0", "100%", "1.5", "-1%", ",", "nan"):
        with pytest.raises(EdgeError):
            ltt.parse_epsilons(bad)
    cases = [("--epsilons", "0.5%,x", "--epsilons x"), ("--delta", "1.5", "--delta 1.5"),
             ("--risk", "accuracy", "--risk 'accuracy'"), ("--pvalue", "normal", "--pvalue 'normal'")]
    for flag, value, words in cases:
        assert_one_line_error(run_cli("eval-controller", "--checkpoint", "nowhere", flag, value), Exit.BAD_INPUT,
                              "edge-model", words)


# ---- the guarantee, by simulation ----

def pooled(ckpt) -> tuple:
    """The val and test caches as one population, with the predictor's distribution on it."""
    t = load_tables(ckpt, ("val", "test"))
    val, test = t["val"], t["test"]
    cat = lambda a, b: np.concatenate([a, b])    # noqa: E731
    pool = ExitTable(cat(val.logits, test.logits), cat(val.labels, test.labels), val.exits, val.flops,
                     val.head_flops, cat(val.first_pooled, test.first_pooled), cat(val.input_stats, test.input_stats))
    predictor = Predictor.load(ckpt / "controller")
    return pool, predictor.proba(predictor.features(pool)), len(val)


@pytest.mark.parametrize("name", ["maxprob", "oneshot"])
@pytest.mark.parametrize("method", ["hb", "binomial"])
def test_the_guarantee_holds_over_many_calibration_draws(exported, name, method):
    """Draw calibration sets of the validation split's size, with replacement, from the pooled val + test
    inputs; certify a knob on each; judge it by its disagreement on the whole pool (the population the
    draws come from, so no second sampling noise). The kept knob's risk must exceed eps in at most delta of
    the draws (+ Monte-Carlo slack)."""
    ckpt = exported[0]
    pool, proba, n = pooled(ckpt)
    families = {f.name: f for f in standard_families(pool, proba)}    # oneshot's lambdas: model constants only
    family = ltt.ordered(families[name])
    # every knob's stopping exit on every pool input, once; each draw is then index arithmetic
    stops = np.stack([run(family.make(k), pool, proba) for k in family.knobs])          # (K, N)
    differs = pool.preds[np.arange(len(pool))[None], stops] != pool.preds[:, -1]         # (K, N)
    risk = differs.mean(1)                                                                # population risk
    draws, eps, delta = 1000, 0.05, 0.1
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(pool), (draws, n))
    weights = np.zeros((draws, len(pool)))
    np.add.at(weights, (np.arange(draws)[:, None], idx), 1)
    counts = (weights @ differs.T).round().astype(int)                                    # (draws, K)
    table = np.array([pvalue(k, n, eps, method) for k in range(n + 1)])
    chosen = np.cumprod(table[counts] <= delta, axis=1).sum(1) - 1                       # fixed sequence
    for r in range(0, draws, 100):   # the vectorised walk is ltt_choose's
        points = [{"knob": j, "disagreement": int(c), "n": n} for j, c in enumerate(counts[r])]
        got = ltt.ltt_choose(points, eps, delta, method=method)
        assert (-1 if got is None else got["knob"]) == chosen[r]
    failed = (chosen >= 0) & (risk[np.maximum(chosen, 0)] > eps)
    slack = 3 * np.sqrt(delta * (1 - delta) / draws)
    assert failed.mean() <= delta + slack, (failed.mean(), delta + slack)
    # Not vacuous: most draws keep a knob past the ones that stop nobody early (their risk is 0) ...
    assert ((chosen >= 0) & (risk[np.maximum(chosen, 0)] > 0)).mean() > 0.5
    # ... and at this eps the naive rule (walk while the calibration disagreement is <= eps) breaks the
    # promise more often than delta (measured: maxprob 0.17, oneshot 0.40 of the draws; LTT: 0.002-0.04)
    naive = np.cumprod(counts <= eps * n, axis=1).sum(1) - 1
    assert ((naive >= 0) & (risk[np.maximum(naive, 0)] > eps)).mean() > delta


# ---- the report's rows ----

def test_guarantee_rows_certify_on_val_and_measure_on_test(exported):
    ckpt = exported[0]
    t = load_tables(ckpt, ("val", "test"))
    val, test = t["val"], t["test"]
    families = [f for f in standard_families(val) if f.name in ("fixed", "maxprob", "patience")]
    g = ltt.guarantee_report(val, test, families, epsilons=[0.001, 0.1], delta=0.1)
    tiny, wide = g["levels"]
    # 0.1 % of 270 inputs: even zero disagreements cannot reject (0.999^270 > 0.1): full depth everywhere
    assert all(r["index"] == -1 and r["flops_fraction"] == 1.0 and r["test_disagreement"] == 0
               for r in tiny["rows"].values())
    assert g["n"] == len(val) and set(wide["rows"]) == {"fixed", "maxprob", "patience"}
    for name, r in wide["rows"].items():
        if r["index"] < 0:
            continue
        assert r["pvalue"] <= 0.1 and r["val_upper_bound"] >= r["val_events"] / len(val)
        family = ltt.ordered(next(f for f in families if f.name == name))
        stop = run(family.make(family.knobs[r["index"]]), test)     # the kept knob, run on test by hand
        differs = (test.preds[np.arange(len(test)), stop] != test.preds[:, -1]).mean()
        assert r["test_disagreement"] == pytest.approx(differs)
        assert r["within_epsilon"] == (differs <= 0.1)
        assert r["accuracy"] == pytest.approx(test.correct[np.arange(len(test)), stop].mean())
    assert wide["best_threshold"] in ("maxprob", "patience")
    assert wide["rows"]["fixed"]["over_best_threshold"] == pytest.approx(
        wide["rows"]["fixed"]["mean_flops"] / wide["rows"][wide["best_threshold"]]["mean_flops"])
    md = ltt.guarantee_markdown(g, main="fixed")
    assert "### eps = 10 %, delta = 0.1" in md and "| **fixed** |" in md and "full depth" in md


# ---- the engine directory's calibration ----

def test_export_writes_the_calibration_counts(exported):
    ckpt, engines = exported
    m = json.loads((engines / "manifest.json").read_text())
    c = m["controller"]["calibration"]
    val = load_tables(ckpt, ("val",))["val"]
    assert c["split"] == "val" and c["n"] == len(val) and c["delta"] == ltt.DELTA and c["pvalue"] == "hb"
    assert c["epsilons"] == list(ltt.EPSILONS) and set(c["risks"]) == {"disagreement", "new_error"}
    assert set(c["modes"]) == {"progressive", "oneshot"}
    assert c["modes"]["progressive"]["values"] == pytest.approx(LAMBDAS)
    assert c == calibration(ckpt)                       # the same counts again: nothing random in them
    # oneshot's counts by hand: the predictor's distribution, OneShot at each lambda, against full depth
    predictor = Predictor.load(ckpt / "controller")
    proba = predictor.proba(predictor.features(val))
    entry = c["modes"]["oneshot"]
    for i in (0, len(entry["values"]) // 2, len(entry["values"]) - 1):
        stop = run(OneShot(entry["values"][i]), val, proba)
        at = np.arange(len(val)), stop
        assert entry["disagreement"][i] == int((val.preds[at] != val.preds[:, -1]).sum())
        assert entry["new_error"][i] == int((val.correct[:, -1] & ~val.correct[at]).sum())
    assert entry["values"][0] == 0.0 and entry["disagreement"][0] <= entry["disagreement"][-1]


def mutate(m, path, value):
    """A copy of manifest m with m[path...] set to value (value None: deleted)."""
    m = copy.deepcopy(m)
    obj = m["controller"]["calibration"]
    for key in path[:-1]:
        obj = obj[key]
    if value is None:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value(obj[path[-1]]) if callable(value) else value
    return m


MALFORMED = {
    "count-above-n": (("modes", "progressive", "disagreement"), lambda v: [10 ** 6] + v[1:],
                      "controller.calibration.modes.progressive.disagreement must hold"),
    "negative-count": (("modes", "oneshot", "new_error"), lambda v: [-1] + v[1:], "oneshot.new_error must hold"),
    "short-counts": (("modes", "oneshot", "disagreement"), lambda v: v[:-1], "between 0 and n"),
    "float-count": (("modes", "oneshot", "disagreement"), lambda v: [0.5] + v[1:], "oneshot.disagreement"),
    "decreasing": (("modes", "progressive", "values"), lambda v: v[::-1], "values must be increasing"),
    "negative-lambda": (("modes", "progressive", "values"), lambda v: [-1.0] + v[1:], "lambda must be"),
    "no-oneshot": (("modes", "oneshot"), None, "controller.calibration.modes.oneshot missing"),
    "knob": (("modes", "oneshot", "knob"), "threshold", "knob 'threshold'"),
    "order": (("modes", "oneshot", "order"), "aggressive first", "order 'aggressive first'"),
    "flops": (("modes", "oneshot", "flops_fraction"), lambda v: v[1:], "flops_fraction must hold"),
    "n": (("n",), 0, "controller.calibration.n 0"),
    "delta": (("delta",), 1.5, "controller.calibration.delta 1.5"),
    "epsilon": (("epsilons",), [0.005, 0], "controller.calibration.epsilons[1] 0"),
    "pvalue": (("pvalue",), "normal", "pvalue 'normal'"),
    "risks": (("risks",), {"disagreement": "x"}, "controller.calibration.risks.new_error missing"),
}


@pytest.mark.parametrize("damage", MALFORMED, ids=list(MALFORMED))
def test_malformed_calibration_is_refused_in_one_line(exported, damage):
    m = json.loads((exported[1] / "manifest.json").read_text())
    path, value, words = MALFORMED[damage]
    with pytest.raises(EdgeError) as err:
        validate(mutate(m, path, value))
    assert err.value.exit == Exit.CORRUPT and "\n" not in str(err.value) and words in str(err.value)


def test_calibration_is_optional_and_checked_when_opening(exported, engine_copy):
    m = json.loads((exported[1] / "manifest.json").read_text())
    del m["controller"]["calibration"]
    validate(m)                                          # an older directory still opens
    bad = mutate(json.loads((engine_copy / "manifest.json").read_text()), ("n",), -3)
    (engine_copy / "manifest.json").write_text(json.dumps(bad))
    assert_one_line_error(run_infer("check", "--engine-dir", engine_copy), Exit.CORRUPT, "edge-infer",
                          "controller.calibration.n -3")
