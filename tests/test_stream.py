"""`edge-infer run` and `bench` on the exported digits engines: sources, sinks, frame accounting, and every
kind of bad input as one line or a counted skip."""
import json
import shutil

import cv2
import pytest

from conftest import assert_one_line_error, run_infer
from edge_runtime.io.datasets import image_split
from edge_runtime.core.errors import Exit
from edge_runtime.core.budget import Curve
from edge_runtime.core.stats import Reservoir, summary_text
from edge_runtime.io.sources import SourceOptions, open_source


def run_ok(*args):
    out, err, code = run_infer(*args)
    assert code == Exit.OK, err
    return out


@pytest.fixture(scope="module")
def digits_images(tmp_path_factory):
    """A directory of eight digit PNGs and an MJPG video of the same frames."""
    root = tmp_path_factory.mktemp("media")
    x, _, _ = image_split("digits", "test")
    frames = [cv2.resize(im, (32, 32), interpolation=cv2.INTER_NEAREST) for im in x[:8]]
    (root / "images").mkdir()
    for i, im in enumerate(frames):
        cv2.imwrite(str(root / "images" / f"{i:02d}.png"), im)
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for im in frames:
        writer.write(cv2.cvtColor(im, cv2.COLOR_GRAY2BGR))
    writer.release()
    return root


def test_dataset_stream_counts_every_frame(exported, tmp_path):
    jsonl, summary = tmp_path / "frames.jsonl", tmp_path / "summary.json"
    out = run_ok("dataset://digits/test?limit=40", "--engine-dir", exported[1], "--headless", "--quiet",
                 "--json", jsonl, "--summary", summary, "--shadow", "0.5", "--telemetry", "system")
    assert "40 captured = 40 processed + 0 dropped" in out
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(40))
    assert {"timestamp", "label", "score", "depth", "flops", "ms", "true_index"} <= set(records[0])
    assert set(records[0]["ms"]) == {"capture", "preprocess", "segments", "controller", "runtime"}
    s = json.loads(summary.read_text())
    # every microsecond of a frame belongs to a stage: they sum to the frames' wall time
    assert set(s["ms_per_frame"]) == {"capture", "preprocess", "segments", "controller", "runtime", "shadow", "sinks"}
    assert abs(sum(s["ms_per_frame"].values()) - s["frame_ms"]) <= 0.02 * s["frame_ms"]
    assert s["ms_per_frame"]["shadow"] > 0 and abs(s["stages_cover"] - 1) <= 0.02
    assert s["frames"] == {"captured": 40, "processed": 40, "dropped": 0, "dropped_by_reason": {}}
    assert sum(s["depth_histogram"].values()) == 40 and s["shadow"]["frames"] > 0
    assert s["realized_speedup"] is not None and (tmp_path / "summary.md").is_file()


def test_run_is_the_default_command_and_max_frames_stops(exported):
    out = run_ok("dataset://digits/test", "--engine-dir", exported[1], "--headless", "--max-frames", "5")
    assert out.count("frame ") >= 5 and "5 captured = 5 processed" in out


def test_directory_with_a_corrupt_image_is_a_counted_skip(exported, digits_images, tmp_path):
    d = tmp_path / "images"
    shutil.copytree(digits_images / "images", d)
    (d / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = run_ok(d, "--engine-dir", exported[1], "--headless", "--quiet")
    assert "8 captured = 7 processed + 1 dropped (unreadable image: 1)" in out


def test_video_in_video_out(exported, digits_images, tmp_path):
    target = tmp_path / "out.avi"
    out = run_ok(digits_images / "clip.avi", target, "--engine-dir", exported[1], "--quiet")
    assert "8 captured = 8 processed" in out
    cap = cv2.VideoCapture(str(target))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and n == 8 and min(frame.shape[:2]) >= 240   # scaled up for the overlay
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_truncated_video_counts_what_it_lost(exported, digits_images, tmp_path):
    clip = tmp_path / "cut.avi"
    data = (digits_images / "clip.avi").read_bytes()
    clip.write_bytes(data[:len(data) * 2 // 3])
    out, err, code = run_infer(clip, "--engine-dir", exported[1], "--headless", "--quiet")
    assert "Traceback" not in out + err
    if code == Exit.OK:
        line = next(x for x in out.splitlines() if x.startswith("frames"))
        counts = [int(w) for w in line.replace("(", " ").split() if w.isdigit()]
        assert counts[0] == counts[1] + counts[2]            # captured = processed + dropped
    else:
        assert_one_line_error((out, err, code), Exit.CORRUPT, "edge-infer", "cut.avi")


@pytest.mark.parametrize("make, code, words", [
    (lambda p: "camera7", Exit.NOT_FOUND, ["camera7", "/dev/video7"]),
    (lambda p: "csi://x", Exit.BAD_INPUT, ["csi://N"]),
    (lambda p: p / "missing.mp4", Exit.NOT_FOUND, ["no such file"]),
    (lambda p: (p / "junk.mp4").write_bytes(b"not a video at all" * 10) and p / "junk.mp4", Exit.CORRUPT, ["junk.mp4"]),
    (lambda p: (p / "bad.png").write_bytes(b"nope") and p / "bad.png", Exit.CORRUPT, ["not a readable image"]),
    (lambda p: "dataset://nope/test", Exit.BAD_INPUT, ["not an image dataset"]),
    (lambda p: "dataset://digits/dev", Exit.BAD_INPUT, ["no split 'dev'"]),
    (lambda p: "-", Exit.BAD_INPUT, ["standard input carries text"]),
])
def test_bad_sources_are_one_line(exported, tmp_path, make, code, words):
    result = run_infer(make(tmp_path), "--engine-dir", exported[1], "--headless")
    assert_one_line_error(result, code, "edge-infer", *words)


def test_wrong_engine_dir_and_bad_flags_are_one_line(exported, tmp_path):
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", tmp_path, "--headless"),
                          Exit.NOT_FOUND, "edge-infer", "manifest.json")
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", exported[1], "--shadow", "2"),
                          Exit.BAD_INPUT, "edge-infer", "--shadow")
    assert_one_line_error(run_infer("dataset://digits/test", "out.txt", "--engine-dir", exported[1]),
                          Exit.BAD_INPUT, "edge-infer", "OUTPUT")
    assert_one_line_error(run_infer("dataset://digits/test", "display://0", "--engine-dir", exported[1]),
                          Exit.BAD_INPUT, "edge-infer", "display://0")


def test_looped_source_and_rate():
    src = open_source("dataset://digits/test?limit=3", SourceOptions(loop=2))
    assert [f.name for f in src] == ["0", "1", "2"] * 3 and src.counts.captured == 9


def test_resized_input():
    src = open_source("dataset://digits/test?limit=1", SourceOptions(width=16, height=12))
    assert next(iter(src)).data.shape == (12, 16)


def test_reservoir_holds_a_fixed_size():
    r = Reservoir(size=100)
    for v in range(10_000):
        r.add(float(v))
    assert r.n == 10_000 and len(r.values) == 100
    assert 3000 < r.percentiles((50,))["p50"] < 7000


def test_bench_stores_latencies_and_deadline_reads_them(engine_copy, tmp_path):
    out = run_ok("bench", "--engine-dir", engine_copy, "--iterations", "40", "--warmup", "5", "--batch", "8",
                 "--export", tmp_path / "bench.json", "--no-progress")
    r = json.loads((tmp_path / "bench.json").read_text())
    assert len(r["variants"]) == 4 and r["inputs"] == 40 and r["batched"]["batch"] == 8
    # every path against the plain static graph, in one run: the baseline first, at ratio 1
    assert [x["path"] for x in r["feeds"]] == ["plain graph", "full", "progressive", "oneshot", "fixed:1", "fixed:2",
                                               "fixed:3"]
    base, full = r["feeds"][0], r["feeds"][1]
    assert base["median_vs_plain"] == 1.0 and base["flops_fraction"] == full["flops_fraction"] == 1.0
    assert all(0 < x["flops_fraction"] <= 1 and x["median"] > 0 for x in r["feeds"])
    assert [x["path"] for x in r["raw"]] == ["plain graph + numpy", "Runtime.infer full", "Runtime.infer progressive",
                                             "Runtime.infer oneshot"]
    assert set(r["batched"]["paths"]) == {x["path"] for x in r["feeds"]}
    assert "median / plain" in out and r["baseline"] == "reference/full.onnx" and (tmp_path / "bench.md").is_file()
    m = json.loads((engine_copy / "manifest.json").read_text())
    (entry,) = m["bench"]
    assert (entry["backend"], entry["precision"], entry["threads"], entry["batch"]) == ("onnxruntime", "fp32", 1, 1)
    assert all(v > 0 for v in entry["variant_ms"].values()) and len(entry["variant_ms"]) == 4
    curve = entry["curves"]["progressive"]
    assert len(curve) == 9
    assert Curve(curve).pick(1e6) == min(p["lambda"] for p in curve)
    assert Curve(curve).pick(-1.0) == max(p["lambda"] for p in curve)   # nothing fits: the cheapest
    out = run_ok("dataset://digits/test?limit=5", "--engine-dir", engine_copy, "--headless", "--deadline-ms", "5")
    assert "deadline 5 ms" in out and "against full depth from edge-infer bench" in out
    # measured at 1 thread: a deadline at 2 threads has no curve, and says so in one line
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", engine_copy, "--headless", "--threads",
                                    "2", "--deadline-ms", "5"), Exit.NOT_FOUND, "edge-infer", "2 thread(s)")
    # a second bench in oneshot mode adds its curve beside progressive's, in the same entry
    run_ok("bench", "--engine-dir", engine_copy, "--mode", "oneshot", "--iterations", "20", "--warmup", "2",
           "--batch", "4", "--no-progress")
    (entry,) = json.loads((engine_copy / "manifest.json").read_text())["bench"]
    assert set(entry["curves"]) == {"progressive", "oneshot"}


def test_budget_and_deadline_together_is_one_line(exported):
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", exported[1], "--headless", "--budget",
                                    "0.1", "--deadline-ms", "2"), Exit.BAD_INPUT, "edge-infer", "give one")
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", exported[1], "--headless", "--budget",
                                    "-1"), Exit.BAD_INPUT, "edge-infer", ">= 0")


def test_stats_after_a_stream_equal_the_printed_summary(exported):
    """One statistics object: what run_stream returns (and edge-infer prints) is rt.stats()."""
    from edge_runtime.runtime import Runtime
    from edge_runtime.tools.stream import StreamOptions, run_stream
    lines = []
    with Runtime.open(exported[1]) as rt:
        source = open_source("dataset://digits/test?limit=30")
        summary = run_stream(rt, source, [], StreamOptions(quiet=True, shadow=0.3, summary_every=0),
                             say=lambda *a, **k: lines.append(a[0]))
        assert summary == rt.stats()
        assert summary_text(summary) == summary_text(rt.stats())
    assert summary["frames"]["processed"] == 30 and summary["calls"] == 30
    assert summary["shadow"]["frames"] > 0 and summary["accuracy"] is not None
    assert summary["ms_per_frame"]["capture"] > 0 and summary["ms_per_frame"]["segments"] > 0


def test_deadline_without_bench_is_one_line(exported):
    assert_one_line_error(run_infer("dataset://digits/test", "--engine-dir", exported[1], "--headless",
                                    "--deadline-ms", "2"), Exit.NOT_FOUND, "edge-infer", "edge-infer bench")


def test_text_inputs_are_tokenised_to_the_static_length(tmp_path):
    from edge_model.models.text import minilm_dir
    from edge_runtime.core.preprocess import TextPreprocess
    pre = TextPreprocess({"kind": "text", "max_len": 16, "pad_id": 0}, minilm_dir() / "tokenizer.json")
    feed = pre.batch(["a short one", "a much longer sentence " * 10])
    assert feed["input_ids"].shape == feed["attention_mask"].shape == (2, 16)
    assert feed["attention_mask"][0].sum() < 16 == feed["attention_mask"][1].sum()
    lines = tmp_path / "in.txt"
    lines.write_text("first\n\n  \nsecond\n")
    src = open_source(str(lines), text=True)
    assert [f.data for f in src] == ["first", "second"] and src.counts.dropped["empty line"] == 2
