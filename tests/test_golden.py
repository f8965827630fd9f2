"""jetson-inference's test-models idea: a short run's labels, exits and depths (never times), recorded once
by the runtime before the scheduler rewrite (commit dc589ba) on a committed tiny engine directory, must
come out identical from today's runtime in every mode. Re-exported once since, when the controller's
features moved from the graphs to the runtime's C kernels and fixed, full and oneshot moved to chain
graphs with one exit head (issue 12): every decision came out identical to dc589ba's, and the FLOPs of
those three modes were re-recorded (their graphs compute fewer exit heads)."""
import json
from pathlib import Path

import pytest

from conftest import run_infer
from edge_runtime.core.errors import Exit

GOLDEN = Path(__file__).parent / "golden"
KEYS = ("frame", "label", "index", "depth", "exit", "flops", "true_index")


@pytest.mark.parametrize("mode", ["progressive", "oneshot", "fixed:2", "full"])
def test_a_short_run_matches_its_golden_file(mode, tmp_path):
    out = tmp_path / "frames.jsonl"
    _, err, code = run_infer("dataset://digits/test", "--engine-dir", GOLDEN / "digits-vit-tiny", "--headless",
                             "--quiet", "--max-frames", "200", "--mode", mode, "--telemetry", "none",
                             "--summary-every", "0", "--json", out)
    assert code == Exit.OK, err
    got = [{k: r.get(k) for k in KEYS} for r in map(json.loads, out.read_text().splitlines())]
    want = [json.loads(line) for line in (GOLDEN / f"digits-vit-tiny.{mode.replace(':', '_')}.jsonl").read_text()
            .splitlines()]
    assert len(got) == len(want) == 200
    assert got == want
