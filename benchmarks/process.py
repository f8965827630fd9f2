"""The runtime as a user's process meets it, against a plain ONNX Runtime session of the full model: cold
start (a fresh interpreter to the first result) and the whole process's memory.

    python benchmarks/process.py --engine-dir engines/fmnist-vit-demo [--modes progressive,full]
                                 [--repeats 5] [--threads 1] [--out benchmarks/reports/process]

Each number comes from a fresh interpreter (this file, run with --child), started by the parent, which
takes the time just before it starts the child; the child reports when its first result is ready:
  plain     import numpy and onnxruntime, one InferenceSession on the engine directory's baseline
            (reference/full.onnx), one image normalised in numpy and run
  runtime   `from edge_runtime.runtime import Runtime`, Runtime.open(engine_dir, mode), rt.infer(image)
Reported per process: start_s (parent's clock, spawn to first result, the interpreter's own start
included), rss_open_kib (VmRSS after open), rss_kib (VmRSS after the first result) and hwm_kib (VmHWM):
the whole process, libraries included.
Two start conditions, interleaved with the plain session's:
  warm      the machine has opened the engine before: the OS page cache holds the files, and every module's
            bytecode is cached (a PYTHONPYCACHEPREFIX the benchmark primes with one untimed run of each
            process: PYTHONDONTWRITEBYTECODE, set on some machines, would otherwise compile the editable
            edge_runtime from source at every start, as no installed machine does)
  first     as on a machine that never opened it: the engine directory copied to a new path with its page
            cache dropped (posix_fadvise DONTNEED; libraries stay cached, which only a reboot undoes), and
            edge_runtime's bytecode removed from the cache (compiled from source, as on its first import
            after install; numpy's and onnxruntime's stay, as pip compiled them at install)
Medians over --repeats. Writes <out>/<engine>.json and .md.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIB = 1024


def vm(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def child(what: str, engine_dir: str, mode: str, threads: int) -> None:
    import numpy as np
    ref = np.load(Path(engine_dir) / "reference.npz")
    if what == "plain":
        import onnxruntime as ort
        manifest = json.loads((Path(engine_dir) / "manifest.json").read_text())
        pre = manifest["task"]["preprocess"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(Path(engine_dir) / manifest["baseline"]["file"]), opts,
                                    providers=["CPUExecutionProvider"])
        rss_open = vm("VmRSS")
        image = image_of(ref, pre)
        x = (image.astype(np.float32) * pre["scale"] - pre["mean"][0]) / pre["std"][0]
        label = int(sess.run(None, {sess.get_inputs()[0].name: x[None, None]})[0].argmax())
    else:
        from edge_runtime.runtime import Runtime
        rt = Runtime.open(engine_dir, mode=mode, threads=threads)
        rss_open = vm("VmRSS")
        label = rt.infer(image_of(ref, rt.engine.task["preprocess"])).index
    done = time.time()
    print(json.dumps({"done": done, "label": label, "rss_open_kib": rss_open, "rss_kib": vm("VmRSS"),
                      "hwm_kib": vm("VmHWM")}))


def image_of(ref, pre):
    """The first reference image back as the uint8 (H, W) frame a camera or dataset gives."""
    import numpy as np
    x = ref["pixels"][0, 0] * pre["std"][0] + pre["mean"][0]
    return np.clip(np.rint(x / pre["scale"]), 0, 255).astype(np.uint8)


def drop_page_cache(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def spawn(what: str, engine_dir: str, mode: str, threads: int, env: dict) -> dict:
    start = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", what, engine_dir, mode, str(threads)],
                          capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"process.py: the {what} child failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["start_s"] = out.pop("done") - start
    return out


def run_benchmark(engine_dir, modes: list, repeats: int, threads: int, progress: bool = True,
                  conditions: tuple = ("warm", "first")) -> dict:
    import edge_runtime
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="edge-process-") as tmp:
        primed = Path(tmp) / "pyc"
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        base_env["PYTHONPYCACHEPREFIX"] = str(primed)
        for what, mode in [("plain", "-")] + [("runtime", m) for m in modes]:   # untimed: fills the cache
            spawn(what, str(engine_dir), mode, threads, base_env)
        ours = str(Path(edge_runtime.__file__).resolve().parent).lstrip("/")
        for r in range(repeats):
            for condition in conditions:
                for what, mode in [("plain", "-")] + [("runtime", m) for m in modes]:
                    env, where = dict(base_env), str(engine_dir)
                    if condition == "first":
                        where = str(Path(tmp) / f"copy_{r}_{what}_{mode}")
                        shutil.copytree(engine_dir, where)
                        drop_page_cache(Path(where))
                        fresh = Path(tmp) / f"pyc_{r}_{what}_{mode}"
                        shutil.copytree(primed, fresh)
                        shutil.rmtree(fresh / ours, ignore_errors=True)
                        env["PYTHONPYCACHEPREFIX"] = str(fresh)
                    rows.setdefault((condition, what, mode), []).append(spawn(what, where, mode, threads, env))
                    say(f"repeat {r + 1}/{repeats} {condition} {what} {mode}: "
                        f"{rows[(condition, what, mode)][-1]['start_s']:.3f} s")
    results = []
    for (condition, what, mode), rs in rows.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("start_s", "rss_open_kib", "rss_kib", "hwm_kib")}
        results.append({"condition": condition, "what": what, "mode": mode, **med,
                        "start_s_all": [round(x["start_s"], 4) for x in rs]})
    for r in results:
        plain = next(x for x in results if x["what"] == "plain" and x["condition"] == r["condition"])
        r["start_vs_plain"] = r["start_s"] / plain["start_s"]
        r["rss_vs_plain"] = r["rss_kib"] / plain["rss_kib"]
        r["rss_open_vs_plain"] = r["rss_open_kib"] / plain["rss_open_kib"]
    import numpy
    import onnxruntime
    return {"engine_dir": os.path.relpath(Path(engine_dir).resolve()), "threads": threads, "repeats": repeats,
            "python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
            "machine": f"{platform.machine()} {platform.system()}", "results": results}


def markdown(report: dict) -> str:
    lines = [f"Fresh interpreter per number (Python {report['python']}, onnxruntime {report['onnxruntime']}, "
             f"{report['threads']} thread(s), {report['machine']}), median of {report['repeats']}; "
             "start = spawn to the first result; memory = the whole process's VmRSS / VmHWM.", "",
             "| start | process | start s | x plain | RSS after open MiB | RSS after first result MiB | x plain | "
             "VmHWM MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["results"], key=lambda r: (r["condition"], r["what"] != "plain", r["mode"])):
        name = "plain session" if r["what"] == "plain" else f"Runtime {r['mode']}"
        lines.append(f"| {r['condition']} | {name} | {r['start_s']:.3f} | {r['start_vs_plain']:.2f} | "
                     f"{r['rss_open_kib'] / KIB:.1f} | {r['rss_kib'] / KIB:.1f} | {r['rss_vs_plain']:.2f} | "
                     f"{r['hwm_kib'] / KIB:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    p = argparse.ArgumentParser(prog="benchmarks/process.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--engine-dir", required=True, metavar="DIR")
    p.add_argument("--modes", default="progressive,oneshot,full")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/reports/process", metavar="DIR")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not Path("/proc/self/status").is_file():
        print("process.py: /proc/self/status | not here: this benchmark reads Linux's VmRSS and VmHWM", file=sys.stderr)
        return 2
    if not (Path(args.engine_dir) / "manifest.json").is_file():
        print(f"process.py: {args.engine_dir} | not an engine directory (no manifest.json)", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.threads < 0:
        print("process.py: --repeats must be at least 1, --threads at least 0", file=sys.stderr)
        return 2
    report = run_benchmark(args.engine_dir, [m for m in args.modes.split(",") if m], args.repeats, args.threads,
                           not args.no_progress)
    from edge_runtime.io.report import write_json_md
    path = write_json_md(Path(args.out) / f"{Path(args.engine_dir).name}.json", report,
                         f"Process: {report['engine_dir']}", markdown(report))
    print(markdown(report) + f"\nwritten: {path}, {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
