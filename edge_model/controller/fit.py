"""`fit-controller` and `eval-controller`: the two-level controller from a checkpoint's exit cache.

fit: projection + LightGBM predictor (level 1), the PPO policy (level 2) and its two ablations
(terminal-only reward; no predictor in the state), all saved under <checkpoint>/controller/:
  predictor.txt/.npz/.json, predictor.onnx, policy.onnx, policy.npz, policy_terminal.npz,
  policy_nopredictor.npz, controller.json (configs, PPO logs, parity checks, timings).
eval: every method swept on val, operating points chosen on val (report.py's margin rule, and Learn then
Test's certified points per eps, ltt.py), reported on test.
"""
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_model.checkpoint import read_config, write_json
from edge_model.controller.policy import (PolicyMethod, PPOConfig, export_policy_onnx, step_flops,
                                          table_states, train_policy)
from edge_model.controller.predictor import Predictor, fit_predictor, fit_projection, predictor_report
from edge_model.controller.report import (MARGIN, TOLERANCE, Family, choose_on_val, controller_report,
                                          standard_families, sweep, write_report)
from edge_model.controller.ltt import (DELTA, EPSILONS, calibration_block, check_method, check_risk,
                                       guarantee_markdown, guarantee_report)
from edge_model.controller.table import ExitTable
from edge_model.exits import load_exits
from edge_runtime.core.budget import lambda_sweep
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.policy import PolicyArrays

POLICIES = {"policy": {}, "policy_terminal": {"dense": False}, "policy_nopredictor": {"use_predictor": False}}
LAMBDAS = lambda_sweep(80)   # the eval sweep of the budget knob (edge_runtime.core.budget owns its range)


def load_tables(ckpt_dir, splits=("train", "val", "test")) -> dict:
    config = read_config(ckpt_dir)
    head_flops = 2 * config["model"]["dim"] * config["model"]["classes"]   # one exit's classifier
    return {s: ExitTable.from_cache(load_exits(ckpt_dir, s), head_flops) for s in splits}


def policy_parity(policy, arrays: PolicyArrays, onnx_path, table: ExitTable, proba) -> dict:
    """Max abs difference of the numpy step and the ONNX step against torch over a real episode batch."""
    import onnxruntime as ort
    import torch
    idx = np.arange(min(len(table), 512))
    lam = np.full(len(idx), 0.1, np.float32)
    xs = table_states(table.subset(idx), proba[idx], lam, arrays.use_predictor)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h = c = np.zeros((len(idx), arrays.hidden), np.float32)
    th, tc = torch.zeros(len(idx), arrays.hidden), torch.zeros(len(idx), arrays.hidden)
    nh, nc = arrays.zero_state(len(idx))
    worst = {"numpy": 0.0, "onnx": 0.0}
    for k in range(table.num_exits):
        with torch.no_grad():
            tl, tv, th, tc = policy(torch.from_numpy(xs[:, k]), th, tc)
        ref = np.concatenate([tl[:, None].numpy(), tv[:, None].numpy(), th.numpy(), tc.numpy()], 1)
        nl, nv, nh, nc = arrays.step(xs[:, k], nh, nc)
        ol, ov, h, c = sess.run(None, {"state": xs[:, k], "h": h, "c": c})
        worst["numpy"] = max(worst["numpy"], float(np.abs(np.concatenate([nl[:, None], nv[:, None], nh, nc], 1) - ref).max()))
        worst["onnx"] = max(worst["onnx"], float(np.abs(np.concatenate([ol[:, None], ov[:, None], h, c], 1) - ref).max()))
    return worst


def _preset(ckpt_dir) -> dict:
    from edge_model.presets import PRESETS
    return PRESETS.get(read_config(ckpt_dir).get("preset"), {})


def predictor_params(ckpt_dir) -> dict:
    """The checkpoint's preset's LightGBM overrides (presets.py `predictor`), or none."""
    return dict(_preset(ckpt_dir).get("predictor", {}))


def accuracy_budget(ckpt_dir) -> float:
    """The accuracy a chosen knob may lose against full depth (presets.py `tolerance`, else 0.3 points)."""
    return float(_preset(ckpt_dir).get("tolerance", TOLERANCE))


def out_of_fold_proba(train: ExitTable, val: ExitTable, projection, folds: int = 5, seed: int = 0,
                      params: dict = None) -> np.ndarray:
    """The predictor's output on the training split as the policy will see it on new inputs: each fold
    scored by a predictor fitted without it. Scored by the final predictor instead, the training inputs
    get sharper, more often right distributions than any test input will, and the policy learns to
    trust them too much (stacking leakage)."""
    fold = np.random.default_rng(seed).permutation(len(train)) % folds
    proba = np.zeros((len(train), train.num_exits), np.float32)
    for f in range(folds):
        held = np.nonzero(fold == f)[0]
        p = fit_predictor(train.subset(np.nonzero(fold != f)[0]), val, projection, seed=seed, params=params)
        proba[held] = p.proba(p.features(train.subset(held)))
    return proba


def fit_controller(ckpt_dir, out_dir=None, ppo: PPOConfig = PPOConfig(), progress: bool = True) -> dict:
    import torch
    torch.set_num_threads(1)   # a 64-unit LSTM: threads only add contention
    start = time.time()
    out = Path(out_dir or Path(ckpt_dir) / "controller")
    out.mkdir(parents=True, exist_ok=True)
    tables = load_tables(ckpt_dir)
    train, val, test = tables["train"], tables["val"], tables["test"]
    projection = fit_projection(train.first_pooled)
    params = predictor_params(ckpt_dir)
    predictor = fit_predictor(train, val, projection, seed=ppo.seed, params=params)
    predictor.save(out)
    predictor.export_onnx(out / "predictor.onnx")
    summary = {"checkpoint": str(ckpt_dir), "exits": [int(e) for e in train.exits],
               "predictor": predictor_report(predictor, val, test, projection, out / "predictor.onnx"),
               "predictor_seconds": round(time.time() - start, 1), "policies": {}}
    proba = out_of_fold_proba(train, val, projection, seed=ppo.seed, params=params)
    summary["policy_proba"] = "out-of-fold on the training split (5 folds)"
    for name, change in POLICIES.items():
        t0 = time.time()
        cfg = replace(ppo, **change)
        if progress:
            print(f"{name}: PPO, {cfg.updates} updates of {cfg.episodes} episodes", flush=True)
        policy, log = train_policy(train, proba, cfg, progress=progress)
        arrays = policy.arrays(cfg.use_predictor)
        arrays.save(out / f"{name}.npz")
        entry = {"config": vars(cfg), "log": log, "seconds": round(time.time() - t0, 1),
                 "step_flops": step_flops(train.num_exits, cfg.hidden)}
        if name == "policy":
            export_policy_onnx(policy, out / "policy.onnx")
            entry["parity_max_abs"] = policy_parity(policy, arrays, out / "policy.onnx", val,
                                                    predictor.proba(predictor.features(val)))
        summary["policies"][name] = entry
    summary["fit_seconds"] = round(time.time() - start, 1)
    write_json(out / "controller.json", summary)
    return summary


def updates_to_reach(log: list, level: float, window: int = 10):
    """First PPO update whose moving-average true reward reaches `level` (None if never)."""
    r = np.array([e["mean_reward"] for e in log])
    smooth = np.convolve(r, np.ones(window) / window, mode="valid")
    hit = np.nonzero(smooth >= level)[0]
    return int(hit[0] + window) if len(hit) else None


def eval_controller(ckpt_dir, report_dir=None, controller_dir=None, compare=None, epsilons=EPSILONS,
                    delta: float = DELTA, risk: str = "disagreement", pvalue: str = "hb") -> dict:
    """Sweep, choose on val, report on test; ablations beside. `compare`: a second checkpoint (the
    distillation-off training) whose exits are reported next to this one's. epsilons, delta, risk, pvalue:
    the Learn-then-Test points (ltt.guarantee_report), certified on val, measured on test."""
    risk, pvalue = check_risk(risk), check_method(pvalue)
    import json
    ctrl = Path(controller_dir or Path(ckpt_dir) / "controller")
    fitted = ctrl / "controller.json"
    if not fitted.is_file():
        raise EdgeError(f"{ctrl} | no fitted controller; make it with: edge-model fit-controller "
                        f"--checkpoint {ckpt_dir}", Exit.NOT_FOUND)
    summary = json.loads(fitted.read_text())
    tables = load_tables(ckpt_dir, ("val", "test"))
    val, test = tables["val"], tables["test"]
    predictor = Predictor.load(ctrl)
    proba_val, proba_test = (predictor.proba(predictor.features(t)) for t in (val, test))
    predictor_flops = float(summary["predictor"]["feature_groups"]["projected"]["flops"])
    families = standard_families(val, proba_val, predictor_flops)
    for name in POLICIES:
        arrays = PolicyArrays.load(ctrl / f"{name}.npz")
        # charged as if every boundary ran a step (an upper bound), plus the predictor's projection
        extra = summary["policies"][name]["step_flops"] * val.num_exits + predictor_flops * arrays.use_predictor
        families.append(Family(name, lambda lam, a=arrays: PolicyMethod(a, lam), LAMBDAS, extra))
    report = controller_report(val, test, families, proba_val, proba_test, policy_family="policy",
                               tolerance=accuracy_budget(ckpt_dir))
    report["guarantee"] = guarantee_report(val, test, families, proba_val, proba_test, report["families"],
                                           epsilons, delta, risk, pvalue)
    report["predictor"] = summary["predictor"]
    report["ablations"] = ablations(report, summary, ckpt_dir, compare)
    out = Path(report_dir or Path(ckpt_dir) / "report")
    write_report(report, out, extra_plots=[("ppo_reward", plot_rewards(summary))])
    with open(out / "controller.md", "a") as f:
        f.write(guarantee_markdown(report["guarantee"], report["main"]))
        f.write(ablation_markdown(report["ablations"], summary))
    return report


def serving_families(ckpt_dir, controller_dir=None) -> tuple:
    """(val ExitTable, predictor distribution on it, {mode: Family}): the lambda families the runtime serves,
    `progressive` (the policy over LAMBDAS) and `oneshot` (standard_families' sweep), exactly as it runs them."""
    ctrl = Path(controller_dir or Path(ckpt_dir) / "controller")
    val = load_tables(ckpt_dir, ("val",))["val"]
    predictor = Predictor.load(ctrl)
    proba = predictor.proba(predictor.features(val))
    arrays = PolicyArrays.load(ctrl / "policy.npz")
    oneshot = next(f for f in standard_families(val, proba) if f.name == "oneshot")
    return val, proba, {"progressive": Family("policy", lambda lam: PolicyMethod(arrays, lam), LAMBDAS),
                        "oneshot": oneshot}


def operating_points(ckpt_dir, controller_dir=None) -> dict:
    """The budget lambda of `progressive` (the policy) and `oneshot`, chosen on the validation split by the
    report's rule (report.choose_on_val): what an engine directory serves by default."""
    val, proba, modes = serving_families(ckpt_dir, controller_dir)
    full, budget = float(val.correct[:, -1].mean()), accuracy_budget(ckpt_dir)
    out = {}
    for mode, family in modes.items():
        point = choose_on_val(sweep(family, val, proba), full, budget)
        out[mode] = {"lambda": float(point["knob"]), "val_accuracy": point["accuracy"],
                     "val_flops_fraction": point["flops_fraction"]}
    limit = (budget - MARGIN) * 100
    return {"chosen": f"on the validation split: the cheapest lambda within {limit:.1f} points of full depth "
                      "(the report's rule)", "val_full_accuracy": full, **out}


def calibration(ckpt_dir, controller_dir=None) -> dict:
    """controller.calibration: each served mode's lambdas, conservative first, with their disagreement and
    new-error counts on the validation split (ltt.calibration_block), from which the device certifies a
    guarantee at any eps."""
    val, proba, modes = serving_families(ckpt_dir, controller_dir)
    return calibration_block(val, proba, modes)


def ablations(report: dict, summary: dict, ckpt_dir, compare) -> dict:
    logs = {n: p["log"] for n, p in summary["policies"].items()}
    final = np.mean([e["mean_reward"] for e in logs["policy"][-10:]])
    level = float(final - 0.01)
    out = {"reward_level": level,
           "updates_to_level": {n: updates_to_reach(logs[n], level) for n in ("policy", "policy_terminal")},
           "policy_rows": {n: report["headline"][n] for n in POLICIES}}
    rows = {}
    for name, d in (("this checkpoint", ckpt_dir), ("compare", compare)):
        if d is None:
            continue
        tables = load_tables(d, ("test",))
        t = tables["test"]
        rows[name] = {"checkpoint": str(d), "train": read_config(d).get("train", {}).get("exit_loss", "multi"),
                      "test_exit_accuracy": t.correct.mean(0).tolist()}
    out["distillation"] = rows
    return out


def ablation_markdown(ab: dict, summary: dict) -> str:
    lines = ["", "## Ablations", "",
             f"PPO updates until the 10-update moving average of the true reward (correct - lambda * compute) "
             f"reaches {ab['reward_level']:.3f} (the dense policy's final level - 0.01): dense "
             f"{ab['updates_to_level']['policy']}, terminal-only {ab['updates_to_level']['policy_terminal']} "
             f"(None: never within {len(summary['policies']['policy']['log'])} updates).", "",
             "| policy | test acc % | FLOPs % of full | best threshold / method |", "|---|---|---|---|"]
    for name, row in ab["policy_rows"].items():
        lines.append(f"| {name} | {row['accuracy'] * 100:.2f} | {row['flops_fraction'] * 100:.1f} | "
                     f"{row['best_threshold_over_method'] if row['best_threshold_over_method'] is None else format(row['best_threshold_over_method'], '.3f')} |")
    if ab["distillation"]:
        lines += ["", "| training | test accuracy % by exit |", "|---|---|"]
        for name, r in ab["distillation"].items():
            lines.append(f"| {name} ({r['train']}) | " + " ".join(f"{a * 100:.2f}" for a in r["test_exit_accuracy"]) + " |")
    return "\n".join(lines) + "\n"


def plot_rewards(summary: dict):
    def draw(report, ax):
        for name, p in summary["policies"].items():
            r = np.array([e["mean_reward"] for e in p["log"]])
            ax.plot(np.arange(1, len(r) + 1), r, label=name, lw=1)
        ax.set_xlabel("PPO update")
        ax.set_ylabel("mean true reward per episode")
        ax.set_title("PPO training reward")
        ax.legend()
    return draw
