"""One statistics object for a runtime, whoever drives it (the API, `edge-infer run`, bench, the C API).

Running sums plus a fixed-size reservoir for percentiles, so memory stays flat however long it serves
(benchmarks/soak.py). The stages are one fixed list, and every microsecond of a frame belongs to one:
  capture      waiting on the source (a stream)
  preprocess   raw input -> segment 0's feed
  segments     the graphs (backend calls)
  controller   the predictor and the policy
  runtime      the rest of the runtime call: the scheduler's own Python, the results, these statistics
  shadow       full-depth shadow runs (a stream with --shadow)
  sinks        records, sinks, labels, the per-frame line (a stream)
A stream also adds each frame's wall time, so the summary says how much of it the stages account for.
"Network" time is segments + controller: the engines and the decisions, nothing else. `summary()` is
what `rt.stats()` returns and what `edge-infer run` prints: one source for both.
"""
import time
from collections import Counter

import numpy as np

STAGES = ("capture", "preprocess", "segments", "controller", "runtime", "shadow", "sinks")
RESERVOIR = 4096


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


class Stats:
    """Counters since the runtime opened. Times are in ms; a batch's time is shared by its rows."""

    def __init__(self, depths: list, full_flops: int):
        """full_flops: of full depth, one graph (what FLOPs fractions are of)."""
        self.depths, self.full_flops = list(depths), int(full_flops)
        self.frame_ms, self.frames_timed = 0.0, 0
        self.inputs = self.calls = 0
        self.ms = dict.fromkeys(STAGES, 0.0)
        self.hist = np.zeros(len(depths), np.int64)
        self.flops = 0
        self.network = Reservoir()
        self.labelled = self.correct = 0
        self.shadow_frames = self.shadow_differ = 0
        self.shadow_ms = 0.0
        self.energy_j, self.energy_frames = 0.0, 0
        self.source_captured, self.source_dropped = None, Counter()
        self.dropped = Counter()
        self.full_ms_stored = None        # full-depth latency bench measured for this build, if any
        self.start = self.end = None

    # --- what the runtime records, per call
    def add_call(self, exits: np.ndarray, flops: np.ndarray, ms: dict) -> None:
        """A runtime call: each row's exit, the mode's FLOPs per exit, and the call's ms per stage."""
        n = len(exits)
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        self.end = now
        self.inputs += n
        self.calls += 1
        if n == 1:
            k = int(exits[0])
            self.hist[k] += 1
            self.flops += int(flops[k])
        else:
            self.hist += np.bincount(exits, minlength=len(self.hist))
            self.flops += int(flops[exits].sum())
        for k, v in ms.items():
            self.ms[k] += v
        per_row = (ms["segments"] + ms["controller"]) / n
        for _ in range(n):
            self.network.add(per_row)

    def add_frame(self, ms: float) -> None:
        """A stream frame's wall time, from the end of the frame before it to the end of this one."""
        self.frame_ms += ms
        self.frames_timed += 1

    # --- what a stream adds
    def add_stage(self, stage: str, ms: float) -> None:
        self.ms[stage] += ms

    def add_label(self, predicted: int, label) -> None:
        if label is not None:
            self.labelled += 1
            self.correct += int(predicted == label)

    def add_shadow(self, full_ms: float, differs: bool) -> None:
        self.shadow_frames += 1
        self.shadow_ms += full_ms
        self.shadow_differ += int(differs)

    def add_energy(self, mj: float) -> None:
        self.energy_j += mj / 1e3
        self.energy_frames += 1

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def set_source(self, captured: int, dropped: Counter) -> None:
        """The source's own count of the frames it met (handed on or lost there). Counted apart from the
        pipeline's, so a frame lost between them shows as captured != processed + dropped."""
        self.source_captured, self.source_dropped = captured, Counter(dropped)

    def summary(self) -> dict:
        n = max(self.inputs, 1)
        network_ms = (self.ms["segments"] + self.ms["controller"]) / n
        wall = (self.end - self.start) if self.start is not None else 0.0
        if self.shadow_frames:
            full_ms, full_from = self.shadow_ms / self.shadow_frames, "shadow frames, this run"
        elif self.full_ms_stored:
            full_ms, full_from = self.full_ms_stored, "edge-infer bench (manifest)"
        else:
            full_ms, full_from = None, None
        mean_flops = self.flops / n
        dropped = self.source_dropped + self.dropped
        captured = self.source_captured if self.source_captured is not None else self.inputs + sum(dropped.values())
        return {
            "frames": {"captured": captured, "processed": self.inputs, "dropped": sum(dropped.values()),
                       "dropped_by_reason": dict(dropped)},
            "calls": self.calls,
            "network_fps": 1e3 / network_ms if network_ms > 0 else None,
            "pipeline_fps": (self.inputs - 1) / wall if wall > 0 and self.inputs > 1 else None,
            "ms_per_frame": {k: v / n for k, v in self.ms.items()},
            # a stream's frames: wall time per frame, and the share of it the stages account for
            "frame_ms": self.frame_ms / self.frames_timed if self.frames_timed else None,
            "stages_cover": sum(self.ms.values()) / self.frame_ms if self.frame_ms else None,
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
    """The summary as the terminal shows it."""
    f = s["frames"]
    drops = ", ".join(f"{r}: {c}" for r, c in f["dropped_by_reason"].items())
    fmt = (lambda v, spec: "-" if v is None else format(v, spec))   # noqa: E731
    stages = "  ".join(f"{k} {v:.3f}" for k, v in s["ms_per_frame"].items())
    lines = [
        f"frames      {f['captured']} captured = {f['processed']} processed + {f['dropped']} dropped"
        + (f" ({drops})" if drops else ""),
        f"fps         network (segments + controller) {fmt(s['network_fps'], '.1f')}, "
        f"pipeline (wall clock) {fmt(s['pipeline_fps'], '.1f')}",
        f"ms/frame    {stages}" + (f"  = {sum(s['ms_per_frame'].values()):.3f} of {s['frame_ms']:.3f} per frame "
                                   f"({s['stages_cover'] * 100:.1f} %)" if s["frame_ms"] else ""),
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
    g = s.get("guarantee")
    if g:
        now = "full depth" if g["lambda_now"] is None else f"lambda {g['lambda_now']:.4g}"
        cert = "none" if g["certified_lambda"] is None else f"{g['certified_lambda']:.4g}"
        lines.append(f"guarantee   {g['mode']}: disagreement with full depth <= {g['max_disagreement'] * 100:g} % "
                     f"with probability >= {g['confidence'] * 100:g} % on i.i.d. inputs (certified lambda {cert}: "
                     f"{g['calibration']}); live guard: {len(g['steps'])} step(s), now {now}: {g['guard']['events']} of "
                     f"{g['guard']['n']} shadow frames at it differ"
                     + (f"; {g['over_deadline']} call(s) over the deadline for it" if g["over_deadline"] else ""))
    return "\n".join(lines)
