"""`edge-infer`: the device-side command line. Subcommands are thin: parse, call, print."""
import argparse
import sys

from edge_runtime import __version__
from edge_runtime.errors import EdgeError, Exit


def cmd_check(args) -> int:
    from edge_runtime.backends import BackendOptions
    from edge_runtime.check import HEADER, CheckOptions, check_engines, result_line, write_report
    from edge_runtime.engine_dir import EngineDir
    options, backend = CheckOptions.from_args(args), BackendOptions.from_args(args)
    engine = EngineDir.open(args.engine_dir)
    print(f"check {engine.name} ({args.engine_dir}): {len(engine.variants)} variants against PyTorch on the "
          f"reference batch, atol {options.atol:g}, rtol {options.rtol:g}")
    print(HEADER, flush=True)
    report = check_engines(engine, backend, options, on_result=lambda r: print(result_line(r), flush=True))
    if args.json:
        write_report(report, args.json)
    rows, failed = report["results"], [r for r in report["results"] if not r["passed"]]
    print(f"{'FAIL' if failed else 'PASS'}: {len(rows) - len(failed)} of {len(rows)} outputs within tolerance "
          f"({report['samples']} inputs, {report['backend']} on {', '.join(report['providers']) or 'default'})"
          + (", stopped at the first failure" if report["stopped_early"] else ""))
    if failed:
        # the engines do not reproduce their model
        worst = failed[0]
        detail = f", max abs error {worst['max_abs']:.2e}" if "max_abs" in worst else ""
        raise EdgeError(f"{args.engine_dir} | {len(failed)} output(s) out of tolerance, first: depth "
                        f"{worst['depth']} {worst['output']}{detail}", Exit.MISMATCH)
    return Exit.OK


def cmd_build(args) -> int:
    from edge_runtime.backends import BackendOptions
    from edge_runtime.build import BuildOptions, build_engines, build_summary
    options, backend = BuildOptions.from_args(args), BackendOptions.from_args(args)
    print(f"build {args.engine_dir}: onnxruntime {options.precision}, scored against the exported segments, "
          f"tolerance {options.tolerance:g} points", flush=True)
    entry = build_engines(args.engine_dir, options, backend)
    print(build_summary(entry, args.engine_dir))
    return Exit.OK


def cmd_info(args) -> int:
    from edge_runtime.engine_dir import EngineDir, describe
    # the build stamp is reported, not enforced: info is how one finds out why check refuses
    print(describe(EngineDir.open(args.engine_dir, check_build=False)))
    return Exit.OK


def build_parser() -> argparse.ArgumentParser:
    from edge_runtime.backends import BackendOptions
    from edge_runtime.build import BuildOptions
    from edge_runtime.check import CheckOptions
    p = argparse.ArgumentParser(prog="edge-infer", description="Adaptive-depth inference on the device.")
    p.add_argument("--version", action="version", version=f"edge-infer {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of a user error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="run every variant and compare it with PyTorch (Polygraphy-style)")
    c.add_argument("--engine-dir", required=True, metavar="DIR")
    CheckOptions.add_args(c)
    BackendOptions.add_args(c)
    c.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    c.set_defaults(func=cmd_check)
    b = sub.add_parser("build", help="ONNX Runtime builds: optimised fp32 or INT8 (QDQ), scored and recorded")
    b.add_argument("--engine-dir", required=True, metavar="DIR")
    BuildOptions.add_args(b)
    BackendOptions.add_args(b)
    b.set_defaults(func=cmd_build)
    i = sub.add_parser("info", help="manifest summary, provenance, variants, and whether the build fits here")
    i.add_argument("--engine-dir", required=True, metavar="DIR")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return Exit.OK
        return args.func(args)
    except EdgeError as err:
        if args.traceback:
            raise
        print(f"edge-infer: {err}", file=sys.stderr)
        return err.exit
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
