"""`edge-infer run`: a source through the runtime into sinks, one frame at a time, with honest numbers.

Per frame: capture (waiting on the source), then one `Runtime.infer` call (preprocess, segments,
controller, runtime), a shadow run when drawn, then the record and the sinks (sinks). Each frame's wall
time runs from the end of the frame before it, and whatever of it no other stage timed is the sinks'
stage (the record, the sinks, the bookkeeping, the per-frame line): the stages sum to the wall time.
Every number lands in the runtime's one statistics object (edge_runtime.core.stats), so `rt.stats()`
after the stream is the summary printed.
"Network FPS" counts segments + controller time only; "pipeline FPS" counts wall time. Realized speedup
is full-depth network time over adaptive network time, measured on this machine: from shadow frames when
--shadow is on, else from the latencies `edge-infer bench` stored for this build.

Every frame the source met is counted: captured = processed + dropped, with a reason per drop.
"""
import logging
import time
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.errors import EdgeError
from edge_runtime.core.stats import summary_text


@dataclass
class StreamOptions:
    max_frames: int = 0          # 0: until the source ends
    quiet: bool = False          # no per-frame line
    summary_every: float = 5.0   # seconds between summaries
    shadow: float = 0.0          # fraction of frames also run at full depth, to compare online
    seed: int = 0


def record_for(frame, result, ms: dict, sample) -> dict:
    rec = {"timestamp": frame.timestamp, "frame": frame.id, "source": frame.name, **result.as_dict(),
           "lambda": result.lam, "ms": {k: round(v, 4) for k, v in ms.items()}}
    if frame.label is not None:
        rec["true_index"] = frame.label
    if sample is not None and sample.power_w is not None:
        rec["power_w"] = round(sample.power_w, 3)
        rec["energy_mj"] = round(sample.power_w * sum(ms.values()), 4)   # W x ms = mJ
    if sample is not None and sample.temp_c is not None:
        rec["temp_c"] = sample.temp_c
    return rec


def run_stream(runtime, source, sinks: list, options: StreamOptions, telemetry=None, say=print) -> dict:
    """Drive `source` through `runtime` into `sinks`; returns `runtime.stats()`."""
    stats = runtime.statistics
    rng = np.random.default_rng(options.seed)
    last_summary = time.perf_counter()
    frames = iter(source)
    seen = 0
    t_end = time.perf_counter()           # where the next frame's wall time starts
    while not options.max_frames or seen < options.max_frames:
        t0 = t_end
        try:
            frame = next(frames)
        except StopIteration:
            break
        seen += 1
        t1 = time.perf_counter()
        capture_ms = (t1 - t0) * 1e3
        try:
            result = runtime.infer(frame.data, spent_ms=capture_ms)
        except EdgeError as err:
            stats.drop(f"bad input ({str(err).split('| ')[-1]})")
            t_end = time.perf_counter()
            stats.add_stage("capture", capture_ms)
            stats.add_stage("sinks", (t_end - t1) * 1e3)   # the failed call's time, so the stages still sum
            stats.add_frame((t_end - t0) * 1e3)
            continue
        t2 = time.perf_counter()
        shadow_ms = 0.0
        if options.shadow and rng.random() < options.shadow:
            full = runtime.infer(frame.data, mode=runtime.full, record=False)
            stats.add_shadow(full.timings["segments"] + full.timings["controller"], full.index != result.index)
            step = runtime.observe_shadow(full.index != result.index)
            if step is not None:            # the live guard: the stream has drifted from the calibration data
                to = "full depth" if step["to"] is None else f"lambda {step['to']:.4g}"
                logging.getLogger("edge-infer").warning(
                    f"guarantee: frame {frame.id}: {step['events']} of {step['n']} shadow frames differ, the live "
                    f"disagreement is above {runtime.spend.budget.max_disagreement * 100:g} % (lower bound "
                    f"{step['lower'] * 100:.2f} %): "
                    f"lambda {step['from']:.4g} -> {to}")
            shadow_ms = (time.perf_counter() - t2) * 1e3
        ms = {"capture": capture_ms, **result.timings}
        record = record_for(frame, result, ms, telemetry.latest if telemetry else None)
        for sink in sinks:
            sink.write(frame, record)
        stats.add_label(result.index, frame.label)
        if record.get("energy_mj") is not None:
            stats.add_energy(record["energy_mj"])
        if not options.quiet:
            say(f"frame {frame.id}: {record['label']} ({record['score'] * 100:.1f} %) depth {record['depth']}, "
                f"{(ms['segments'] + ms['controller']):.3f} ms network")
        if options.summary_every and t2 - last_summary >= options.summary_every:
            last_summary = t2
            stats.set_source(source.counts.captured + source.counts.dropped_total, source.counts.dropped)
            say(summary_text(runtime.stats()), flush=True)
        t_end = time.perf_counter()
        # infer's own stages were recorded by the runtime: the rest of the frame after it is the sinks'
        stats.add_stage("capture", capture_ms)
        stats.add_stage("shadow", shadow_ms)
        stats.add_stage("runtime", (t2 - t1) * 1e3 - sum(result.timings.values()))   # infer's call itself
        stats.add_stage("sinks", (t_end - t2) * 1e3 - shadow_ms)
        stats.add_frame((t_end - t0) * 1e3)
    stats.set_source(source.counts.captured + source.counts.dropped_total, source.counts.dropped)
    return runtime.stats()
