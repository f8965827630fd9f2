"""benchmarks/gpu_check.py --dry-run: the prepared GPU check's whole logic on the CPU (ONNX Runtime), so the
script a GPU machine runs unchanged is exercised in CI."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_writes_its_reports(tmp_path):
    out = tmp_path / "gpu"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(out), "--dry-run",
                          "--engines", str(ROOT / "tests" / "golden" / "digits-vit-tiny"), "--inputs", "120",
                          "--adaptive-inputs", "60", "--iterations", "20", "--switch-inputs", "10"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] and len(result["engines"]) == 1
    engine = result["engines"][0]
    (label, r), = engine["targets"].items()
    assert "dry run" in label and engine["inputs"] == 120
    assert r["parity"]["max_abs"] < 1e-4 and len(r["parity"]["chains"]) == 7
    assert all(x["argmax_agreement"] == 1.0 for x in r["parity"]["exits"])
    paths = {x["path"]: x for x in r["adaptive"]["paths"]}
    assert set(paths) == {"plain graph", "full", "progressive", "oneshot"}
    assert paths["progressive"]["saving_ratio"] is not None and paths["full"]["saving_ratio"] is None
    assert sum(paths["progressive"]["depth_histogram"].values()) == 60
    assert {v["batch"] for v in r["variants"]} == {1, 32} and len(r["variants"]) == 2 * 5
    md = (out / "gpu_check.md").read_text()
    assert "dry run on the CPU" in md and "| progressive |" in md
