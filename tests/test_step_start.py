"""Every step command starts without torch: --help, argument errors and missing inputs answer at
once (each check runs in a fresh interpreter, where nothing was imported before)."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

RUN = """
import runpy, sys
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
try:
    runpy.run_module(module, run_name="__main__")
except SystemExit as exit:
    print("exit", exit.code, file=sys.stderr)
print("torch" in sys.modules)
"""


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, module, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("step", ["extract", "match", "pairs", "refine", "train", "triangulate", "localize"])
def test_help_imports_no_torch(step):
    shown = run(f"d2_sfm.{step}", "--help")
    assert "exit 0" in shown.stderr and shown.stdout.strip().endswith("False"), shown.stderr[-500:]


def test_missing_inputs_and_unknown_weights_are_reported_before_torch_loads(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "pairs.txt").write_text("a.png b.png\n")
    cases = [
        ("d2_sfm.extract", "--images", str(tmp_path / "missing"), "--output", str(tmp_path / "f.h5")),
        ("d2_sfm.extract", "--images", str(images), "--output", str(tmp_path / "f.h5"), "--weights", "nosuch.pth"),
        ("d2_sfm.reconstruct", "--images", str(images), "--output", str(tmp_path / "out"), "--weights", "nosuch"),
        ("d2_sfm.match", "--pairs", str(tmp_path / "missing.txt"), "--features", "f.h5", "--output",
         str(tmp_path / "m.h5")),
        ("d2_sfm.match", "--pairs", str(tmp_path / "pairs.txt"), "--features", str(tmp_path / "missing.h5"),
         "--output", str(tmp_path / "m.h5")),
        ("d2_sfm.pairs", "--images", str(tmp_path / "missing"), "--output", str(tmp_path / "p.txt")),
    ]
    for module, *args in cases:
        result = run(module, *args)
        assert "exit 2" in result.stderr and "Traceback" not in result.stderr, (module, result.stderr[-500:])
        assert result.stdout.strip() == "False", (module, args)
    assert not (tmp_path / "out").exists() and not (tmp_path / "f.h5").exists()
