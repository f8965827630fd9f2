"""Learn then Test: operating points that carry a guarantee (Angelopoulos et al. 2021, as CALM uses it).

Each family's knobs are put in order, most conservative first, before any calibration data is read
(`ORDER`). Each knob's null "risk > eps" gets a valid p-value from its count of risk events on the
validation split; walking that order while p <= delta (fixed-sequence testing) and keeping the last knob
rejected gives: with probability >= 1 - delta over the validation draw, the kept knob's risk on new inputs
from the same distribution is <= eps. Nothing rejected: full depth, which never disagrees with itself.
The mathematics is edge_runtime.core.guarantee's; this module only orders, counts and reports.

Risks, binary per input:
  disagreement  the stopping exit's argmax differs from full depth's. Needs no label, and the accuracy
                lost against full depth never exceeds it (an input can only turn wrong by disagreeing).
  new_error     wrong where full depth is right (labelled): the accuracy loss before gains are netted.

The knob grid must not come from the calibration data either. The report's threshold grids are quantiles
of the validation confidences, so the threshold families are swept here on fixed grids (`fixed_grid`);
lambdas, patience and depths are fixed values already.
"""
from dataclasses import replace

import numpy as np

from edge_model.controller.methods import Fixed
from edge_model.controller.report import THRESHOLD_FAMILIES, Family, cheapest_fixed_reaching, sweep
from edge_runtime.core.budget import fraction
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.guarantee import METHODS, guaranteed_index, pvalue, upper_bound

EPSILONS = (0.0025, 0.005, 0.01, 0.02)   # the report's grid of risk levels
DELTA = 0.1                              # 1 - delta: the probability over the calibration draw
PLOT_EPSILON = 0.005                     # the level marked on the trade-off plot
TRUNCATION_RATIO = 0.6                   # "beats truncation": <= 0.6x the cheapest fixed depth's FLOPs
RISKS = {"disagreement": "the stopping exit's argmax differs from full depth's",
         "new_error": "wrong where full depth is right (labelled)"}

# Conservative first, by what each method in methods.py does with its knob:
#   fixed     Fixed(k) runs to exit k; the deepest is full depth itself                  -> descending
#   entropy   Threshold stops when normalised entropy <= t: t = 0 stops (almost) nobody  -> ascending
#   maxprob   Threshold stops when max prob >= t: t = 1 stops (almost) nobody           -> descending
#   patience  Patience stops after `patience` agreeing exits: more patience, later stops -> descending
#   predictor PredictorOnly stops at the first exit whose P(l* <= d) >= t: higher t, later -> descending
#   oneshot   OneShot maximises P(l* <= d) - lambda * cost(d): lambda = 0 takes the depth the predictor
#             is surest of, larger lambdas shallower ones                                 -> ascending
#   policy*   PolicyMethod's lambda prices compute in its reward (correct - lambda * compute) -> ascending
# Fixed-sequence testing is valid in any order fixed in advance; a well-chosen one (risk growing along it)
# only makes it stop later.
ORDER = {"fixed": "descending", "entropy": "ascending", "maxprob": "descending", "patience": "descending",
         "predictor": "descending", "oneshot": "ascending", "policy": "ascending"}
_STEPS = np.geomspace(1e-6, 1.0, 120)    # distances from "stop nobody", log-spaced: fine where eps is small
GRIDS = {"entropy": [0.0] + _STEPS.tolist(), "maxprob": [1.0] + (1.0 - _STEPS).tolist(),
         "predictor": [1.0] + (1.0 - _STEPS).tolist()}   # already conservative first


def direction(name: str) -> str:
    """"ascending" or "descending": how a family's knobs run from most to least conservative."""
    key = "policy" if name.startswith("policy") else name
    if key not in ORDER:
        raise ValueError(f"family {name!r} | no conservative order known (known: {', '.join(ORDER)})")
    return ORDER[key]


def conservative_order(name: str, knobs: list) -> list:
    """Indices into `knobs`, most conservative first (ties keep their given order)."""
    return sorted(range(len(knobs)), key=lambda i: knobs[i], reverse=direction(name) == "descending")


def ordered(family: Family) -> Family:
    """The family with its knobs conservative first, on the fixed grid for a threshold family."""
    if family.name in GRIDS:
        return replace(family, knobs=list(GRIDS[family.name]))
    return replace(family, knobs=[family.knobs[i] for i in conservative_order(family.name, family.knobs)])


def counts(family: Family, table, proba=None) -> list:
    """One point per knob, conservative first: report.sweep's points, each with its disagreement and
    new_error counts among the table's n inputs, its accuracy, mean_flops and flops_fraction."""
    return sweep(ordered(family), table, proba)


def check_risk(risk: str) -> str:
    """"disagreement" or "new_error" ("new-error" as the flag spells it), else one line."""
    key = str(risk).replace("-", "_")
    if key not in RISKS:
        raise EdgeError(f"--risk {risk!r} | must be disagreement or new-error", Exit.BAD_INPUT)
    return key


def check_method(method: str) -> str:
    """A p-value method of edge_runtime.core.guarantee ("hb" or "binomial"), else one line."""
    if method not in METHODS:
        raise EdgeError(f"--pvalue {method!r} | must be one of {', '.join(METHODS)}", Exit.BAD_INPUT)
    return method


def parse_epsilons(text) -> list:
    """"0.25%,0.5%,1%,2%" (or fractions) -> sorted distinct levels; one line on a bad entry."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise EdgeError(f"--epsilons {text!r} | give one or more levels, e.g. 0.25%,0.5%,1%", Exit.BAD_INPUT)
    return sorted({fraction(p, "--epsilons") for p in parts})


def ltt_choose(points: list, eps: float, delta: float = DELTA, risk: str = "disagreement", method: str = "hb"):
    """The Learn-then-Test choice among `points` (conservative first, as `counts` gives them).

    Args:
        points: one dict per knob with the risk's count and n (the same n for all).
        eps: the risk level; delta: the error level, both in (0, 1).
        risk: "disagreement" or "new_error".
        method: the p-value ("hb" or "binomial").
    Returns:
        the last point fixed-sequence testing certifies, or None: no knob is, run full depth.
    """
    if not points:
        return None
    risk = check_risk(risk)
    i = guaranteed_index([p[risk] for p in points], points[0]["n"], eps, delta, method)
    return points[i] if i >= 0 else None


def _full_point(table) -> dict:
    """Full depth as a point: what a mode serves when nothing is certified (plain graph, no controller)."""
    n = len(table)
    return {"knob": None, "accuracy": float(table.correct[:, -1].mean()), "mean_flops": table.full_flops,
            "flops_fraction": 1.0, "disagreement": 0, "new_error": 0, "n": n,
            "depth_histogram": [0] * (table.num_exits - 1) + [n]}


def _row(val_points: list, test_points: list, i: int, eps: float, delta: float, risk: str, method: str,
         test, fixed_test: list) -> dict:
    """Knob i (-1: full depth) as certified on validation and measured on test."""
    t = test_points[i] if i >= 0 else _full_point(test)
    v = val_points[i] if i >= 0 else None
    full_acc = float(test.correct[:, -1].mean())
    fixed = cheapest_fixed_reaching(fixed_test, t["accuracy"])
    over_fixed = None if fixed is None else t["mean_flops"] / fixed["mean_flops"]
    return {"index": i, "knob": t["knob"],
            "val_events": None if v is None else v[risk], "n": val_points[0]["n"],
            "pvalue": None if v is None else pvalue(v[risk], v["n"], eps, method),
            "val_upper_bound": None if v is None else upper_bound(v[risk], v["n"], delta),
            "mean_flops": t["mean_flops"], "flops_fraction": t["flops_fraction"],
            "flops_reduction": 1 - t["flops_fraction"], "accuracy": t["accuracy"],
            "accuracy_change_points": (t["accuracy"] - full_acc) * 100,
            "test_disagreement": t["disagreement"] / t["n"], "test_new_error": t["new_error"] / t["n"],
            "within_epsilon": t[risk] / t["n"] <= eps,
            "cheapest_fixed": None if fixed is None else {
                "exit": fixed["knob"], "layer": int(test.exits[fixed["knob"]]), "accuracy": fixed["accuracy"],
                "mean_flops": fixed["mean_flops"]},
            "over_fixed": over_fixed,
            "beats_truncation": over_fixed is not None and over_fixed <= TRUNCATION_RATIO,
            "depth_histogram": t["depth_histogram"]}


def guarantee_report(val, test, families: list, proba_val=None, proba_test=None, sweeps: dict = None,
                     epsilons=EPSILONS, delta: float = DELTA, risk: str = "disagreement", method: str = "hb") -> dict:
    """Every family's Learn-then-Test point per eps, certified on `val` and measured on `test`.

    Args:
        val, test: the two splits' ExitTables.
        families: report Families (oracle is skipped: it reads labels).
        proba_val, proba_test: the predictor's distributions, passed to every method.
        sweeps: {name: {"val": points, "test": points}} already swept in each family's knob order (the
            report's): reused, reordered, for families whose knobs are fixed values; threshold families are
            swept again on their fixed grids.
        epsilons, delta, risk, method: the levels, the risk and the p-value (module docstring).
    Returns:
        plain JSON: the protocol, and per eps each family's row and the best threshold baseline.
    """
    risk, method = check_risk(risk), check_method(method)
    sweeps = sweeps or {}
    curves = {}
    for fam in families:
        if fam.name == "oracle":
            continue
        if fam.name in GRIDS or fam.name not in sweeps:
            o = ordered(fam)
            curves[fam.name] = (sweep(o, val, proba_val), sweep(o, test, proba_test))
        else:
            order = conservative_order(fam.name, fam.knobs)
            curves[fam.name] = tuple([sweeps[fam.name][s][i] for i in order] for s in ("val", "test"))
    fixed_test = curves["fixed"][1] if "fixed" in curves else \
        sweep(Family("fixed", Fixed, list(range(test.num_exits))), test)
    levels = []
    for eps in epsilons:
        rows = {}
        for name, (v, t) in curves.items():
            chosen = ltt_choose(v, eps, delta, risk, method)
            i = -1 if chosen is None else next(j for j, p in enumerate(v) if p is chosen)
            rows[name] = _row(v, t, i, eps, delta, risk, method, test, fixed_test)
        thresholds = {n: r["mean_flops"] for n, r in rows.items() if n in THRESHOLD_FAMILIES}
        best = min(thresholds, key=thresholds.get) if thresholds else None
        for name, r in rows.items():
            r["over_best_threshold"] = None if best is None or name in THRESHOLD_FAMILIES else \
                r["mean_flops"] / thresholds[best]
        levels.append({"epsilon": eps, "best_threshold": best, "rows": rows})
    return {"risk": risk, "risk_means": RISKS[risk], "pvalue": method, "delta": delta, "epsilons": list(epsilons),
            "n": len(val), "exits": [int(e) for e in test.exits], "order": {n: direction(n) for n in curves},
            "grids": {n: f"{len(GRIDS[n])} fixed knobs" for n in curves if n in GRIDS},
            "text": PROTOCOL.format(risk=risk, means=RISKS[risk], method=method, delta=delta, conf=1 - delta,
                                    n=len(val), grid=len(GRIDS["maxprob"]), ratio=TRUNCATION_RATIO),
            "levels": levels}


PROTOCOL = (
    "Risk: {risk} ({means}). Each method's knobs are ordered most conservative first before any data is read "
    "(lambda ascending, max-prob and predictor thresholds descending, entropy ascending, patience and depth "
    "descending); each knob's null \"risk > eps\" is tested with the {method} p-value on its risk events among "
    "the {n} validation inputs, and fixed-sequence testing at delta = {delta:g} keeps the last knob rejected "
    "(full depth when none is). Guarantee: with probability >= {conf:.3g} over the validation split, the kept knob's "
    "{risk} on new inputs from the same distribution is <= eps. Only that knob is run on test. The threshold "
    "families sweep {grid} fixed knobs here (t or 1 - t log-spaced from 1e-6 to 1), not the validation quantiles "
    "of the tables above, so that the knobs too are fixed before the data. FLOPs / best threshold: the method's "
    "test FLOPs over the cheapest threshold baseline's (entropy, maxprob, patience) under the same procedure. "
    "Beats truncation: at most {ratio:g}x the FLOPs of the cheapest fixed depth with at least the same test "
    "accuracy.")


def _pct(x, spec=".2f"):
    return "-" if x is None else format(x * 100, spec)


def guarantee_markdown(g: dict, main: str = "policy") -> str:
    """One table per eps: each method's certified knob on validation and its test numbers."""
    risk = g["risk"].replace("_", " ")
    lines = ["", "## Guaranteed operating points (Learn then Test)", "", g["text"], ""]
    for level in g["levels"]:
        rows, eps = level["rows"], level["epsilon"]
        lines += [f"### eps = {eps * 100:g} %, delta = {g['delta']:g}", "",
                  f"| method | knob | val {risk} (of {g['n']}) | p-value | val upper bound % | test FLOPs cut % "
                  f"| test disagreement % | test {risk} <= eps | test acc vs full (points) | cheapest fixed "
                  "at that acc | FLOPs / fixed | beats truncation | FLOPs / best threshold |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name in sorted(rows, key=lambda n: n != main):
            r = rows[name]
            knob = r["knob"]
            if r["index"] < 0:
                knob = "full depth"
            elif name == "fixed":   # the knob is an exit index; people read layers
                knob = f"exit {knob} (layer {g['exits'][knob]})"
            else:
                knob = format(knob, ".4g") if isinstance(knob, float) else str(knob)
            fixed = r["cheapest_fixed"]
            lines.append(
                f"| {'**' + name + '**' if name == main else name} | {knob} | "
                f"{'-' if r['val_events'] is None else r['val_events']} | "
                f"{'-' if r['pvalue'] is None else format(r['pvalue'], '.3g')} | {_pct(r['val_upper_bound'])} | "
                f"{_pct(r['flops_reduction'], '.1f')} | {_pct(r['test_disagreement'])} | "
                f"{'yes' if r['within_epsilon'] else 'no'} | {r['accuracy_change_points']:+.2f} | "
                f"{'none' if fixed is None else 'layer %d (%.2f %%)' % (fixed['layer'], fixed['accuracy'] * 100)} | "
                f"{'-' if r['over_fixed'] is None else format(r['over_fixed'], '.2f')} | "
                f"{'yes' if r['beats_truncation'] else 'no'} | "
                f"{'-' if r['over_best_threshold'] is None else format(r['over_best_threshold'], '.2f')} |")
        best = level["best_threshold"]
        if main in rows and best is not None:
            lines += ["", f"{main} / best threshold ({best}) under the same procedure: "
                          f"{rows[main]['over_best_threshold']:.3f} of its test FLOPs.", ""]
    return "\n".join(lines) + "\n"


def calibration_block(val, proba, modes: dict, delta: float = DELTA, epsilons=EPSILONS,
                      method: str = "hb") -> dict:
    """controller.calibration for the manifest: per served mode, its lambdas conservative first and the
    risk events of each on the validation split, so the device certifies any eps itself.

    Args:
        val: the validation ExitTable; proba: the predictor's distribution on it.
        modes: {mode: Family} with lambda knobs, exactly the methods the runtime runs per mode.
        delta, epsilons, method: the defaults recorded beside the counts (the device may ask others).
    Returns:
        plain JSON (edge_runtime.core.manifest documents and checks it).
    """
    out = {}
    for mode, family in modes.items():
        points = counts(family, val, proba)
        out[mode] = {"knob": "lambda", "order": "conservative first", "values": [float(p["knob"]) for p in points],
                     "disagreement": [int(p["disagreement"]) for p in points],
                     "new_error": [int(p["new_error"]) for p in points],
                     "flops_fraction": [float(p["flops_fraction"]) for p in points]}
    return {"split": "val", "n": len(val), "delta": float(delta), "epsilons": [float(e) for e in epsilons],
            "pvalue": check_method(method), "risks": dict(RISKS), "modes": out}
