"""`edge-infer`: the device-side command line. Subcommands are thin: parse, call, print."""
import argparse
import os
import sys

from edge_runtime import __version__
from edge_runtime.core.errors import EdgeError, Exit, run_command


def cmd_check(args) -> int:
    from edge_runtime.core.engine_dir import EngineDir
    from edge_runtime.runtime import RuntimeOptions
    from edge_runtime.tools.check import HEADER, CheckOptions, check_engines, result_line, write_report
    options, runtime = CheckOptions.from_args(args), RuntimeOptions.from_args(args)
    engine = EngineDir.open(args.engine_dir)
    print(f"check {engine.name} ({args.engine_dir}): {len(engine.variants)} variants against PyTorch on the "
          f"reference batch, atol {options.atol:g}, rtol {options.rtol:g}")
    print(HEADER, flush=True)
    report = check_engines(engine, runtime, options, on_result=lambda r: print(result_line(r), flush=True))
    if args.json:
        write_report(report, args.json)
    rows, failed = report["results"], [r for r in report["results"] if not r["passed"]]
    print(f"{'FAIL' if failed else 'PASS'}: {len(rows) - len(failed)} of {len(rows)} outputs within tolerance "
          f"({report['samples']} inputs, {report['build']} on {report['executor']})"
          + (", stopped at the first failure" if report["stopped_early"] else ""))
    if failed:
        # the engines do not reproduce their model
        worst = failed[0]
        detail = f", max abs error {worst['max_abs']:.2e}" if "max_abs" in worst else ""
        raise EdgeError(f"{args.engine_dir} | {len(failed)} output(s) out of tolerance, first: depth "
                        f"{worst['depth']} {worst['path']} {worst['output']}{detail}", Exit.MISMATCH)
    return Exit.OK


def cmd_build(args) -> int:
    from edge_runtime.runtime import RuntimeOptions
    from edge_runtime.tools.build import BuildOptions, build_engines, build_summary
    options, runtime = BuildOptions.from_args(args), RuntimeOptions.from_args(args)
    backend = "onnxruntime" if runtime.backend == "auto" else runtime.backend
    print(f"build {args.engine_dir}: {backend} {options.precision}, scored against the exported segments, "
          f"tolerance {options.tolerance:g} points", flush=True)
    entry = build_engines(args.engine_dir, options, runtime)
    print(build_summary(entry, args.engine_dir))
    return Exit.OK


def cmd_info(args) -> int:
    from edge_runtime.core.engine_dir import EngineDir
    from edge_runtime.tools.info import describe
    print(describe(EngineDir.open(args.engine_dir)))
    return Exit.OK


def open_runtime(args, deadline: bool = False):
    from edge_runtime.runtime import Runtime, RuntimeOptions
    return Runtime.open(args.engine_dir, mode=args.mode, budget=args.budget, options=RuntimeOptions.from_args(args),
                        deadline_ms=(args.deadline_ms or None) if deadline else None,
                        max_disagreement=getattr(args, "max_disagreement", None),
                        confidence=getattr(args, "confidence", None))


def cmd_run(args) -> int:
    import json
    import logging
    from pathlib import Path

    from edge_runtime.core.stats import summary_text
    from edge_runtime.io.sinks import JsonLines, open_output
    from edge_runtime.io.sources import SourceOptions, open_source
    from edge_runtime.io.telemetry import Telemetry
    from edge_runtime.tools.stream import StreamOptions, run_stream
    logging.basicConfig(level=args.log_level.upper(), format="edge-infer: %(message)s")
    log = logging.getLogger("edge-infer")
    if not 0.0 <= args.shadow <= 1.0:
        raise EdgeError(f"--shadow {args.shadow} | a fraction of frames, 0..1", Exit.BAD_INPUT)
    if args.max_frames < 0 or args.deadline_ms < 0:
        raise EdgeError("--max-frames and --deadline-ms | must be >= 0", Exit.BAD_INPUT)
    sinks, telemetry, source = [], None, None
    with open_runtime(args, deadline=True) as rt:
        text = rt.text
        options = SourceOptions(args.input_width, args.input_height, args.input_rate, args.input_loop)
        source = open_source(args.input, options, text=text)
        try:
            for note in source.notes:
                log.warning(note)
            source.notes.clear()
            output = args.output or (None if args.headless else "display://0")
            if output:
                try:
                    sinks.append(open_output(output, args.input_rate or 30.0, text))
                except EdgeError:
                    if args.output:
                        raise
                    log.warning("no display here: running headless (pass --headless to say so)")
            if args.json:
                sinks.append(JsonLines(args.json))
            if args.telemetry != "none":
                telemetry = Telemetry(args.telemetry_interval, args.telemetry).start()
            print(f"{rt.engine.name}: {rt.describe()}; input {source.uri}"
                  + (f"; {telemetry.describe()}" if telemetry else ""), flush=True)
            stream = StreamOptions(args.max_frames, args.quiet, args.summary_every, args.shadow)
            summary = run_stream(rt, source, sinks, stream, telemetry)
        finally:
            if telemetry:
                telemetry.close()
            for sink in sinks:
                sink.close()
            source.close()
        for note in source.notes:
            log.warning(note)
    summary.update(engine=rt.engine.name, input=source.uri, mode=str(rt.mode),
                   telemetry=telemetry.describe() if telemetry else "off")
    print(summary_text(summary))
    if args.summary:
        from edge_runtime.io.report import write_json_md
        write_json_md(Path(args.summary), summary, "edge-infer run", summary_text(summary))
    if args.print_json:
        print(json.dumps(summary))
    return Exit.OK


def cmd_bench(args) -> int:
    from pathlib import Path

    from edge_runtime.io.report import write_json_md
    from edge_runtime.tools.bench import BenchOptions, bench, markdown, store
    options = BenchOptions.from_args(args)
    with open_runtime(args) as rt:
        print(f"bench {rt.engine.name}: {rt.describe()}", flush=True)
        result = bench(rt, options, say=print if options.progress else (lambda *a, **k: None))
        if options.store:
            store(rt, result)
    text = markdown(result)
    print(text)
    if args.export:
        write_json_md(Path(args.export), result, f"edge-infer bench: {result['engine']}", text)
    return Exit.OK


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    from edge_runtime.core.controller import MODES
    from edge_runtime.runtime import RuntimeOptions
    p.add_argument("--engine-dir", required=True, metavar="DIR")
    g = p.add_argument_group("controller")
    g.add_argument("--mode", default="progressive", help=f"{', '.join(MODES)} (default progressive)")
    g.add_argument("--budget", type=float, default=None, metavar="LAMBDA",
                   help="the price of compute, >= 0 (default: the lambda chosen on validation for the mode)")
    RuntimeOptions.add_args(p)


def build_parser() -> argparse.ArgumentParser:
    from edge_runtime.runtime import RuntimeOptions
    from edge_runtime.tools.build import BuildOptions
    from edge_runtime.tools.check import CheckOptions
    p = argparse.ArgumentParser(prog="edge-infer", description="Adaptive-depth inference on the device.",
                                allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"edge-infer {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of a user error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", allow_abbrev=False, help="run every variant and compare it with PyTorch (Polygraphy-style)")
    c.add_argument("--engine-dir", required=True, metavar="DIR")
    CheckOptions.add_args(c)
    RuntimeOptions.add_args(c)
    c.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    c.set_defaults(func=cmd_check)
    b = sub.add_parser("build", allow_abbrev=False,
                       help="builds: ONNX Runtime optimised fp32 or INT8 (QDQ), TensorRT fp32/fp16/int8 engines on "
                            "the device (--backend tensorrt); scored and recorded")
    b.add_argument("--engine-dir", required=True, metavar="DIR")
    BuildOptions.add_args(b)
    RuntimeOptions.add_args(b)   # --precision: the build to make
    b.set_defaults(func=cmd_build)
    r = sub.add_parser("run", allow_abbrev=False, help="adaptive inference on a stream: edge-infer [run] INPUT [OUTPUT] --engine-dir DIR",
                       description="Sources: dataset://NAME/SPLIT[?limit=N], csi://N, /dev/videoN, v4l2://N, cameraN, "
                       "rtsp://..., video and image files, directories; for text models a text file or -.")
    r.add_argument("input", metavar="INPUT")
    r.add_argument("output", nargs="?", default=None, metavar="OUTPUT", help="display://N or a video file")
    add_runtime_args(r)
    r.add_argument("--deadline-ms", type=float, default=0.0, metavar="MS",
                   help="pick lambda per frame to fit this latency (needs edge-infer bench first; "
                        "not with --budget)")
    r.add_argument("--max-disagreement", default=None, metavar="EPS",
                   help="serve the lambda certified (Learn then Test on the engine's calibration counts) to disagree "
                        "with full depth on at most EPS of new inputs, e.g. 0.5%%; with --shadow, a live guard steps "
                        "back when the stream drifts")
    r.add_argument("--confidence", default=None, metavar="P",
                   help="the guarantee's probability over the calibration split (default 90%%)")
    r.add_argument("--shadow", type=float, default=0.0, metavar="P",
                   help="run a fraction P of frames at full depth too, and report how often the answers differ")
    g = r.add_argument_group("input")
    g.add_argument("--input-width", type=int, default=0)
    g.add_argument("--input-height", type=int, default=0)
    g.add_argument("--input-rate", type=float, default=0.0, help="frames per second (0: as fast as they come)")
    g.add_argument("--input-loop", type=int, default=0, help="extra passes over a file or dataset (-1: forever)")
    g = r.add_argument_group("output")
    g.add_argument("--headless", action="store_true", help="no display window")
    g.add_argument("--json", default=None, metavar="FILE", help="JSON Lines, one record per frame")
    g.add_argument("--summary", default=None, metavar="FILE", help="the final summary as JSON (+ .md beside)")
    g.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: the whole input)")
    g.add_argument("--quiet", action="store_true", help="no line per frame")
    g.add_argument("--summary-every", type=float, default=5.0, metavar="S", help="seconds between summaries")
    g.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    g.add_argument("--telemetry", default="auto", choices=("auto", "jtop", "nvml", "system", "none"))
    g.add_argument("--telemetry-interval", type=float, default=0.5, metavar="S")
    r.set_defaults(func=cmd_run)
    bn = sub.add_parser("bench", allow_abbrev=False, help="latency per variant, adaptive vs full, controller overhead, throughput")
    add_runtime_args(bn)
    from edge_runtime.tools.bench import BenchOptions
    BenchOptions.add_args(bn)
    bn.set_defaults(func=cmd_bench)
    i = sub.add_parser("info", allow_abbrev=False, help="manifest summary, provenance, variants, and whether the build fits here")
    i.add_argument("--engine-dir", required=True, metavar="DIR")
    i.set_defaults(func=cmd_info)
    return p


COMMANDS = ("check", "build", "info", "run", "bench")


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # jetson-inference's shape: `edge-infer INPUT [OUTPUT] --engine-dir DIR` means `edge-infer run ...`
    if not any(a in COMMANDS for a in argv) and any(not a.startswith("-") for a in argv):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return Exit.OK

    def call() -> int:
        try:
            return args.func(args)
        except BrokenPipeError:        # `edge-infer ... | head`: the reader left, nothing is wrong
            sys.stdout = open(os.devnull, "w")
            return Exit.OK

    return run_command("edge-infer", call, args.traceback)


if __name__ == "__main__":
    sys.exit(main())
