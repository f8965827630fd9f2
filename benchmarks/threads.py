"""Threads: every mode, and the plain graph, at 1 and at N intra-op threads, side by side in one process.

    python benchmarks/threads.py --engine-dir engines/fmnist-vit [--threads 2] [--batches 1,8,32]
                                 [--inputs 512] [--out benchmarks/reports/threads]

Two runtimes are open at once, one per thread count (with the same session options the runtime always
uses: edge_runtime.backends.ort.session_options), and two plain sessions of the baseline graph. Each
(path, batch) runs the same inputs on both thread counts in alternating blocks, so load drift hits both
alike. Reported: inputs per second at each thread count (the median over the blocks: one noisy block
does not decide) and their ratio (N threads / 1 thread; below 1 means more threads ran slower), per mode
and batch. Writes <out>/<engine>.json and .md.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

BLOCKS = 16


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/threads.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--engine-dir", required=True, metavar="DIR")
    p.add_argument("--threads", type=int, default=2, help="the thread count compared with 1 (default 2)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--inputs", type=int, default=512, help="inputs per block and path (default 512)")
    p.add_argument("--out", default="benchmarks/reports/threads", metavar="DIR")
    args = p.parse_args(argv)
    import onnxruntime as ort

    from edge_runtime.core.controller import Mode
    from edge_runtime.core.errors import EdgeError
    from edge_runtime.io.sources import SourceOptions, open_source
    from edge_runtime.runtime import Runtime
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        if args.threads < 2 or not batches or min(batches) < 1 or args.inputs < 1:
            raise ValueError
    except ValueError:
        print("threads.py: --threads >= 2, --batches positive integers, --inputs >= 1", file=sys.stderr)
        return 2
    try:
        rts = {t: Runtime.open(args.engine_dir, threads=t) for t in (1, args.threads)}
    except EdgeError as err:
        print(f"threads.py: {err}", file=sys.stderr)
        return err.exit
    rt = rts[1]
    source = open_source(f"dataset://{rt.engine.task['dataset']}/test", SourceOptions(loop=-1), text=rt.text)
    raw = []
    for frame in source:
        raw.append(frame.data)
        if len(raw) >= args.inputs:
            break
    source.close()
    feed = rt.preprocess.batch(raw)
    plain = {}
    for t in rts:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = t
        plain[t] = ort.InferenceSession(str(rt.engine.baseline().path), opts, providers=["CPUExecutionProvider"])
    modes = {"plain graph": None, "full": rt.full, "progressive": Mode("progressive"), "oneshot": Mode("oneshot"),
             f"fixed:{rt.depths[len(rt.depths) // 2 - 1]}": Mode("fixed", len(rt.depths) // 2 - 1)}
    rows = []
    for batch in batches:
        chunks = [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in feed.items()}
                  for i in range(0, len(raw) - batch + 1, batch)]
        for name, mode in modes.items():
            def go(t):
                if mode is None:
                    return lambda c: plain[t].run(None, c)
                return lambda c: rts[t].run(c, mode=mode, check=False)
            fns = {t: go(t) for t in rts}
            for fn in fns.values():        # warm-up
                for c in chunks[:8]:
                    fn(c)
            secs = {t: [] for t in rts}
            for b in range(BLOCKS):
                for t in (list(rts) if b % 2 == 0 else list(rts)[::-1]):
                    s = time.perf_counter()
                    for c in chunks:
                        fns[t](c)
                    secs[t].append(time.perf_counter() - s)
            n = len(chunks) * batch
            ips = {t: n / float(np.median(secs[t])) for t in rts}
            rows.append({"path": name, "batch": batch, "inputs_per_s_1": ips[1], f"inputs_per_s_{args.threads}":
                         ips[args.threads], "ratio": ips[args.threads] / ips[1]})
            print(f"batch {batch:3d} {name:14s} 1 thread {ips[1]:8.0f}/s  {args.threads} threads "
                  f"{ips[args.threads]:8.0f}/s  ratio {rows[-1]['ratio']:.3f}", flush=True)
    from edge_runtime.backends.ort import PARALLEL_FROM
    # below PARALLEL_FROM rows both runtimes run the same single-thread sessions: their ratios measure this
    # machine's noise, and only the larger batches can be slower for real
    same = [r["ratio"] for r in rows if r["path"] != "plain graph" and r["batch"] < PARALLEL_FROM]
    report = {"engine": rt.engine.name, "threads": args.threads, "inputs": len(raw), "blocks": BLOCKS,
              "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "rows": rows, "parallel_from": PARALLEL_FROM,
              "identical_sessions_ratio_range": [min(same), max(same)] if same else None,
              "never_slower": all(r["ratio"] >= 1.0 for r in rows
                                  if r["path"] != "plain graph" and r["batch"] >= PARALLEL_FROM)}
    lines = [f"1 against {args.threads} intra-op threads, {len(raw)} inputs, "
             f"{BLOCKS} alternating blocks, {os.cpu_count()} CPUs, onnxruntime {ort.__version__}.", "",
             f"| path | batch | inputs/s, 1 thread | inputs/s, {args.threads} threads | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['batch']} | {r['inputs_per_s_1']:.0f} | "
                     f"{r[f'inputs_per_s_{args.threads}']:.0f} | {r['ratio']:.3f} |")
    if same:
        lines += ["", f"Below batch {PARALLEL_FROM} both thread counts run the same single-thread sessions: their "
                      f"ratios ({min(same):.3f}-{max(same):.3f}) are this machine's noise."]
    lines += ["", f"Runtime paths from batch {PARALLEL_FROM} on never slower with {args.threads} threads: "
                  f"{report['never_slower']}."]
    from edge_runtime.io.report import write_json_md
    write_json_md(Path(args.out) / f"{rt.engine.name}.json", report, f"Threads: {rt.engine.name}", "\n".join(lines))
    print("\n".join(lines))
    for r in rts.values():
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
