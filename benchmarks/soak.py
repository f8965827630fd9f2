"""Soak: a long `edge-infer` run from a dataset source, its resident memory watched from outside.

    python benchmarks/soak.py --engine-dir engines/fmnist-vit --frames 100000

Starts `edge-infer dataset://<dataset>/test --input-loop -1 --max-frames N --headless --quiet` in its own
process, reads its VmRSS from /proc every --every seconds, and reports resident memory after warm-up
(--warmup seconds) against the end, the growth in percent, and the run's frame accounting (captured =
processed + dropped) from its summary. JSON + Markdown under benchmarks/reports/.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.io.report import write_json_md  # noqa: E402


def rss_mb(pid: int):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine-dir", required=True)
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before the baseline RSS")
    p.add_argument("--every", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--out", default=str(ROOT / "benchmarks/reports/soak.json"))
    args = p.parse_args()
    manifest = json.loads((Path(args.engine_dir) / "manifest.json").read_text())
    summary = Path(args.out).with_name("soak-summary.json")
    cmd = [sys.executable, "-m", "edge_runtime.tools.cli", f"dataset://{manifest['task']['dataset']}/test",
           "--engine-dir", args.engine_dir, "--input-loop", "-1", "--max-frames", str(args.frames),
           "--headless", "--quiet", "--summary-every", "0", "--telemetry", "none", "--summary", str(summary)]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        time.sleep(args.every)
        r = rss_mb(proc.pid)
        if r is not None:
            samples.append((time.time() - start, r))
    out, err = proc.communicate()
    if proc.returncode != 0:
        print(err.strip(), file=sys.stderr)
        return proc.returncode
    s = json.loads(summary.read_text())
    after = [r for t, r in samples if t >= args.warmup]
    base, end, peak = after[0], after[-1], max(after)
    frames = s["frames"]
    result = {"command": " ".join(cmd), "seconds": round(time.time() - start, 1), "frames": frames,
              "accounting_holds": frames["captured"] == frames["processed"] + frames["dropped"],
              "rss_mb": {"after_warmup": base, "end": end, "peak_after_warmup": peak,
                         "warmup_s": args.warmup, "samples": len(samples)},
              "growth_percent": 100 * (end - base) / base, "peak_growth_percent": 100 * (peak - base) / base,
              "pipeline_fps": s["pipeline_fps"], "network_fps": s["network_fps"]}
    md = (f"{frames['processed']} frames processed of {frames['captured']} captured ({frames['dropped']} dropped); "
          f"accounting holds: {result['accounting_holds']}.\n\n"
          f"| RSS after {args.warmup:g} s warm-up | at the end | peak after warm-up | growth | peak growth |\n"
          f"|---|---|---|---|---|\n| {base:.1f} MB | {end:.1f} MB | {peak:.1f} MB | "
          f"{result['growth_percent']:+.2f} % | {result['peak_growth_percent']:+.2f} % |\n\n"
          f"{result['seconds']} s in all; pipeline {s['pipeline_fps']:.0f} fps, network {s['network_fps']:.0f} fps.")
    write_json_md(Path(args.out), result, "Soak", md)
    print(md)
    return 0 if result["accounting_holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
