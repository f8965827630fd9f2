"""`edge-infer run`: a source through the runtime into sinks, one frame at a time, with honest numbers.

Per frame the stages are timed separately: capture (waiting on the source), preprocess, segments,
controller, postprocess (results, shadow run excluded, sinks). "Network FPS" counts segments + controller
time only; "pipeline FPS" counts wall time from the first frame to the last. Realized speedup is full-depth
network time over adaptive network time, measured on this machine: from shadow frames when --shadow is on,
else from the latencies `edge-infer bench` stored in the manifest; it sits next to the FLOPs speedup.

Every frame the source met is counted: captured = processed + dropped, with a reason per drop. All
statistics are running sums plus a fixed-size reservoir for percentiles, so memory stays flat however long
the stream runs (the 100,000-frame soak in benchmarks/soak.py).
"""
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

STAGES = ("capture", "preprocess", "segments", "controller", "postprocess")
RESERVOIR = 4096


@dataclass
class StreamOptions:
    max_frames: int = 0          # 0: until the source ends
    quiet: bool = False          # no per-frame line
    summary_every: float = 5.0   # seconds between summaries
    shadow: float = 0.0          # fraction of frames also run at full depth, to compare online
    deadline_ms: float = 0.0     # pick lambda per frame to fit this latency (needs edge-infer bench)
    budget: float = None         # lambda; None: the runtime's
    seed: int = 0


class Reservoir:
    """A uniform sample of at most `size` values from a stream of any length (Vitter's algorithm R)."""

    def __init__(self, size: int = RESERVOIR, seed: int = 0):
        self.values = np.zeros(size, np.float64)
        self.n, self.rng = 0, np.random.default_rng(seed)

    def add(self, v: float) -> None:
        if self.n < len(self.values):
            self.values[self.n] = v
        else:
            j = self.rng.integers(0, self.n + 1)
            if j < len(self.values):
                self.values[j] = v
        self.n += 1

    def percentiles(self, qs=(50, 90, 99)) -> dict:
        vals = self.values[:min(self.n, len(self.values))]
        return {f"p{q}": float(np.percentile(vals, q)) if len(vals) else None for q in qs}


class StreamStats:
    def __init__(self, depths: list, full_flops: int):
        self.depths, self.full_flops = depths, full_flops
        self.processed = 0
        self.dropped = Counter()
        self.ms = dict.fromkeys(STAGES, 0.0)
        self.hist = np.zeros(len(depths), np.int64)
        self.flops = 0
        self.network = Reservoir()
        self.labelled = self.correct = 0
        self.shadow_frames = self.shadow_differ = 0
        self.shadow_ms = 0.0
        self.energy_j = 0.0
        self.energy_frames = 0
        self.start = self.end = None

    def add(self, record: dict, ms: dict, label) -> None:
        self.processed += 1
        for k in STAGES:
            self.ms[k] += ms[k]
        self.hist[record["exit"]] += 1
        self.flops += record["flops"]
        self.network.add(ms["segments"] + ms["controller"])
        if label is not None:
            self.labelled += 1
            self.correct += int(record["index"] == label)
        if record.get("energy_mj") is not None:
            self.energy_j += record["energy_mj"] / 1e3
            self.energy_frames += 1

    def summary(self, captured: int, dropped: Counter, full_ms_stored) -> dict:
        n = max(self.processed, 1)
        network_ms = (self.ms["segments"] + self.ms["controller"]) / n
        wall = (self.end - self.start) if self.start is not None and self.end is not None else 0.0
        full_ms, full_from = None, None
        if self.shadow_frames:
            full_ms, full_from = self.shadow_ms / self.shadow_frames, "shadow frames, this run"
        elif full_ms_stored:
            full_ms, full_from = full_ms_stored, "edge-infer bench (manifest)"
        mean_flops = self.flops / n
        return {
            "frames": {"captured": captured, "processed": self.processed, "dropped": sum(dropped.values()),
                       "dropped_by_reason": dict(dropped)},
            "network_fps": 1e3 / network_ms if network_ms > 0 else None,
            "pipeline_fps": (self.processed - 1) / wall if wall > 0 and self.processed > 1 else None,
            "ms_per_frame": {k: v / n for k, v in self.ms.items()},
            "network_ms": {"mean": network_ms, **self.network.percentiles()},
            "depth_histogram": {str(d): int(c) for d, c in zip(self.depths, self.hist)},
            "mean_flops": mean_flops, "flops_fraction": mean_flops / self.full_flops,
            "flops_speedup": self.full_flops / mean_flops if mean_flops else None,
            "full_depth_network_ms": full_ms, "full_depth_from": full_from,
            "realized_speedup": full_ms / network_ms if full_ms and network_ms else None,
            "accuracy": self.correct / self.labelled if self.labelled else None,
            "shadow": {"frames": self.shadow_frames, "differ": self.shadow_differ,
                       "differ_rate": self.shadow_differ / self.shadow_frames if self.shadow_frames else None},
            "energy_mj_per_frame": 1e3 * self.energy_j / self.energy_frames if self.energy_frames else None,
        }


def summary_text(s: dict) -> str:
    f = s["frames"]
    drops = ", ".join(f"{r}: {c}" for r, c in f["dropped_by_reason"].items())
    fmt = (lambda v, spec: "-" if v is None else format(v, spec))
    stages = "  ".join(f"{k} {v:.3f}" for k, v in s["ms_per_frame"].items())
    lines = [
        f"frames      {f['captured']} captured = {f['processed']} processed + {f['dropped']} dropped"
        + (f" ({drops})" if drops else ""),
        f"fps         network {fmt(s['network_fps'], '.1f')}, pipeline {fmt(s['pipeline_fps'], '.1f')}",
        f"ms/frame    {stages}",
        f"network ms  mean {s['network_ms']['mean']:.3f}, p50 {fmt(s['network_ms']['p50'], '.3f')}, "
        f"p90 {fmt(s['network_ms']['p90'], '.3f')}, p99 {fmt(s['network_ms']['p99'], '.3f')}",
        "depths      " + "  ".join(f"{d}:{c}" for d, c in s["depth_histogram"].items()),
        f"FLOPs       {s['flops_fraction'] * 100:.1f} % of full depth (speedup {fmt(s['flops_speedup'], '.2f')}x); "
        f"realized speedup {fmt(s['realized_speedup'], '.2f')}x"
        + (f" against full depth from {s['full_depth_from']}" if s["full_depth_from"] else
           " (full-depth latency unknown: run edge-infer bench or --shadow)"),
    ]
    if s["accuracy"] is not None:
        lines.append(f"accuracy    {s['accuracy'] * 100:.2f} % on the labelled frames")
    if s["shadow"]["frames"]:
        lines.append(f"shadow      {s['shadow']['frames']} frames at full depth, the adaptive answer differs on "
                     f"{s['shadow']['differ']} ({s['shadow']['differ_rate'] * 100:.2f} %)")
    if s["energy_mj_per_frame"] is not None:
        lines.append(f"energy      {s['energy_mj_per_frame']:.2f} mJ per frame")
    return "\n".join(lines)


class DeadlineBudget:
    """--deadline-ms: per frame, the lowest lambda (the most accurate) whose expected network latency,
    measured by `edge-infer bench` on this machine, fits the time left in the frame's deadline."""

    def __init__(self, manifest: dict, deadline_ms: float):
        curve = (manifest.get("bench") or {}).get("budget_curve")
        if not curve:
            raise EdgeError("--deadline-ms | the manifest has no latency measurements; run edge-infer bench "
                            "--engine-dir DIR on this machine first", Exit.NOT_FOUND)
        pairs = sorted((float(p["lambda"]), float(p["mean_ms"])) for p in curve)
        self.lambdas = np.array([p[0] for p in pairs])
        self.ms = np.array([p[1] for p in pairs])
        self.deadline_ms = deadline_ms

    def pick(self, spent_ms: float) -> float:
        fits = np.nonzero(self.ms <= self.deadline_ms - spent_ms)[0]
        return float(self.lambdas[fits[0]] if len(fits) else self.lambdas[-1])


def record_for(frame, result, ms: dict, sample, lam) -> dict:
    rec = {"timestamp": frame.timestamp, "frame": frame.id, "source": frame.name, **result.as_dict(),
           "lambda": lam, "ms": {k: round(v, 4) for k, v in ms.items()}}
    if frame.label is not None:
        rec["true_index"] = frame.label
    if sample is not None and sample.power_w is not None:
        rec["power_w"] = round(sample.power_w, 3)
        rec["energy_mj"] = round(sample.power_w * sum(ms.values()), 4)   # W x ms = mJ
    if sample is not None and sample.temp_c is not None:
        rec["temp_c"] = sample.temp_c
    return rec


def run_stream(runtime, source, sinks: list, options: StreamOptions, telemetry=None, say=print) -> dict:
    """Drive `source` through `runtime` into `sinks`; returns the summary (see StreamStats.summary)."""
    from edge_runtime.core.controller import Mode
    full_flops = int(runtime.chain_flops[-1])
    stats = StreamStats(runtime.depths, full_flops)
    rng = np.random.default_rng(options.seed)
    deadline = DeadlineBudget(runtime.engine.manifest, options.deadline_ms) if options.deadline_ms else None
    lam_fixed = options.budget if options.budget is not None else runtime.budget_for(runtime.mode)
    full_mode = Mode("fixed", len(runtime.depths) - 1)
    stored = runtime.engine.variants[-1].get("latency_ms")
    last_summary = time.perf_counter()
    frames = iter(source)
    while not options.max_frames or stats.processed + sum(stats.dropped.values()) < options.max_frames:
        t0 = time.perf_counter()
        try:
            frame = next(frames)
        except StopIteration:
            break
        t1 = time.perf_counter()
        if stats.start is None:
            stats.start = t1
        try:
            feed = runtime.preprocess.batch([frame.data])
        except EdgeError as err:
            stats.dropped[f"bad input ({str(err).split('| ')[-1]})"] += 1
            continue
        t2 = time.perf_counter()
        ms = {"capture": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}
        lam = deadline.pick(ms["capture"] + ms["preprocess"]) if deadline else lam_fixed
        out = runtime.run(feed, budget=lam)
        result = runtime.results(out)[0]
        t3 = time.perf_counter()
        ms.update(segments=out.seconds["segments"] * 1e3, controller=out.seconds["controller"] * 1e3)
        ms["postprocess"] = (t3 - t2) * 1e3 - sum(out.seconds.values()) * 1e3   # the result, as recorded
        if options.shadow and rng.random() < options.shadow:
            full = runtime.run(feed, mode=full_mode)
            stats.shadow_frames += 1
            stats.shadow_ms += sum(full.seconds.values()) * 1e3
            stats.shadow_differ += int(full.logits[0].argmax() != result.index)
        record = record_for(frame, result, ms, telemetry.latest if telemetry else None, lam)
        t4 = time.perf_counter()
        for sink in sinks:
            sink.write(frame, record)
        ms["postprocess"] += (time.perf_counter() - t4) * 1e3       # the summary's postprocess adds the sinks
        t5 = time.perf_counter()
        stats.add(record, ms, frame.label)
        stats.end = t5
        if not options.quiet:
            say(f"frame {frame.id}: {record['label']} ({record['score'] * 100:.1f} %) depth {record['depth']}, "
                f"{(ms['segments'] + ms['controller']):.3f} ms network")
        if options.summary_every and t5 - last_summary >= options.summary_every:
            last_summary = t5
            say(summary_text(stats.summary(*frame_counts(source, stats), stored)), flush=True)
    return stats.summary(*frame_counts(source, stats), stored)


def frame_counts(source, stats: StreamStats) -> tuple:
    """(captured, dropped by reason). Captured is the source's own count of the frames it met (handed on
    or lost there); processed + dropped is the pipeline's. The two are counted apart, so a frame lost
    between them shows as captured != processed + dropped."""
    return source.counts.captured + source.counts.dropped_total, source.counts.dropped + stats.dropped
