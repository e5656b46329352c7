"""A real SIGKILL inside every step of `python -m d2_sfm.localize`, then a resume: the results file
and summary numbers equal those of an uninterrupted run (issue: Trust, item 3).

One output folder is killed in turn during GeM retrieval, feature extraction, database matching,
right after triangulation (before its step record is written), query matching and pose
estimation; each next run resumes what the killed one left. The step is recognised from the
run's own stderr (step banners, progress bars, log lines).
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d2_sfm.datasets import synthetic

pytestmark = pytest.mark.slow

# (where the kill lands, what must have appeared on stderr since the run started)
KILL_POINTS = [
    ("retrieval: GeM descriptors", r"\[1/5\][\s\S]*global descriptors:[^\r\n]*\| [1-9]\d*/"),
    ("extraction", r"\[2/5\][\s\S]*extract:[^\r\n]*\| [1-9]\d*/"),
    ("database matching", r"\[3/5\][\s\S]*database pairs from shared"),
    ("after triangulation", r"Triangulated \d+ points"),
    ("query matching", r"\[4/5\][\s\S]*match:"),
    ("pose estimation", r"\[5/5\]"),
]


def command(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "d2_sfm.localize", "--dataset", "aachen_v1_1", "--root", str(root),
            "--output", str(out), "--weights", "hed_vgg16", "--max-edge", "160", "--num-retrieved", "3"]


ENV = {**os.environ, "D2_SFM_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_and_kill(args: list[str], pattern: str, timeout: float = 120.0) -> tuple[int, str]:
    """Start the run, SIGKILL it as soon as its stderr matches `pattern`; (exit code, stderr)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    text, deadline = "", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(process.stderr.fileno(), 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            if re.search(pattern, text):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        code = process.wait()
        process.stderr.close()
    return code, text


def outcome(out: Path) -> tuple[str, dict]:
    summary = json.loads((out / "summary.json").read_text())
    results = Path(summary["results"]).read_text()
    numbers = {key: summary[key] for key in ("num_queries", "num_localized", "failures", "evaluation")}
    numbers["inliers"] = {q["name"]: (q["num_inliers"], q["num_correspondences"]) for q in summary["queries"]}
    return results, numbers


def test_sigkill_in_every_step_then_resume_equals_an_uninterrupted_run(tmp_path):
    root = synthetic.main("aachen_v1_1", tmp_path / "ds", num_db=6, num_queries=2, image_size=(160, 120))
    reference = subprocess.run(command(root, tmp_path / "reference"), capture_output=True, text=True, env=ENV,
                               timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "killed"
    landed = []
    for where, pattern in KILL_POINTS:
        code, stderr = run_and_kill(command(root, out), pattern)
        assert "Traceback" not in stderr, (where, stderr[-3000:])
        assert code in (-signal.SIGKILL, 0), (where, code, stderr[-3000:])
        assert re.search(pattern, stderr), (where, stderr[-3000:])  # the kill came in that step
        if code == -signal.SIGKILL:
            landed.append(where)
    assert len(landed) >= len(KILL_POINTS) - 1, landed  # the last step may finish before the signal
    final = subprocess.run(command(root, out), capture_output=True, text=True, env=ENV, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Traceback" not in final.stderr
    assert outcome(out) == outcome(tmp_path / "reference")
