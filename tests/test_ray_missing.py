"""Without Ray installed: importing d2_sfm never imports ray, and `--executor ray` is one error line."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from d2_sfm.executors import ExecutorConfig, worker_device
from d2_sfm.errors import ConfigError

WITHOUT_RAY = "import sys; sys.modules['ray'] = None  # any `import ray` now raises ImportError\n"


def run_without_ray(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY + code], capture_output=True, text=True, timeout=120)


def test_importing_d2_sfm_does_not_import_ray():
    result = run_without_ray("import d2_sfm.extract, d2_sfm.match, d2_sfm.executors, d2_sfm.distributed.tasks\n"
                             "loaded = [m for m, v in sys.modules.items() if v is not None]\n"
                             "assert 'ray' not in loaded, 'ray imported'\n")
    assert result.returncode == 0, result.stderr


def test_executor_ray_without_ray_is_one_error_line_per_step(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "pairs.txt").write_text("a.png b.png\n")
    outputs = [tmp_path / "features.h5", tmp_path / "matches.h5"]
    extract_argv = ["--images", str(images), "--output", str(outputs[0]), "--executor", "ray"]
    match_argv = ["--pairs", str(tmp_path / "pairs.txt"), "--features", str(outputs[0]), "--output",
                  str(outputs[1]), "--executor", "ray"]
    result = run_without_ray("from d2_sfm import cli, extract, match\n"
                             f"codes = cli.run_cli(extract.cli, {extract_argv!r}), "
                             f"cli.run_cli(match.cli, {match_argv!r})\n"
                             "print(*codes)\n")
    assert result.stdout.split() == ["2", "2"], result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and all("pip install" in line and "ray" in line for line in errors), result.stderr
    assert "Traceback" not in result.stderr and not any(output.exists() for output in outputs)


def test_executor_options_are_checked():
    with pytest.raises(ConfigError, match="kind"):
        ExecutorConfig(kind="dask")
    with pytest.raises(ConfigError, match="ray_gpus_per_task"):
        ExecutorConfig(kind="ray", ray_gpus_per_task=-1)
    with pytest.raises(ConfigError, match="ray_address"):  # would be ignored by a local run
        ExecutorConfig(kind="local", ray_address="10.0.0.1:6379")
    with pytest.raises(ConfigError, match="device"):  # GPU tasks need a GPU device, and the reverse
        worker_device(ExecutorConfig(kind="ray", ray_gpus_per_task=1), "cpu")
    with pytest.raises(ConfigError, match="device"):
        worker_device(ExecutorConfig(kind="ray"), "cuda:1")
    assert worker_device(ExecutorConfig(kind="ray", ray_gpus_per_task=0.5), "cuda:1") == "cuda"
