"""report.html of a real (small) reconstruction and of a localize-style folder: content, escaping,
offline-ness, and rendering in a real headless Chromium (no console errors, non-blank 3D view)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pycolmap
import pytest

from d2_sfm import report
from d2_sfm.cli import EXIT_BAD_INPUT, run_cli
from d2_sfm.localization.estimation import QueryResult

BACKGROUND_BGR = (26, 22, 20)  # viewer.js BACKGROUND [20, 22, 26] (RGB)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed here when missing if we are root with apt-get, else a skip."""
    browser = find_browser()
    if browser is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, timeout=900)
            if find_browser() is None:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
                subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True,
                               timeout=900)
        except (OSError, subprocess.SubprocessError):
            pass
        browser = find_browser()
    if browser is None:
        pytest.skip("no headless browser: install Debian's chromium (apt-get install chromium) to run this test")
    return browser


def run_browser(browser: str, page, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--window-size=1280,1000", "--virtual-time-budget=3000", *args,
               page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_report_shows_the_run_offline(run_dir):
    path = report.write_report(run_dir)
    page = path.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert path == run_dir / "report.html" and not (run_dir / "report.html.partial").exists()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing from the network
    assert "<link" not in page and "@import" not in page
    data = json.loads(re.search(r'<script type="application/json" id="d2sfm-data">(.*?)</script>', page, re.S)[1])
    model = pycolmap.Reconstruction(str(run_dir / "sfm"))
    assert len(data["points"]["xyz"]) == 3 * model.num_points3D() == 3 * summary["num_points3D"]
    assert len(data["cameras"]) == model.num_reg_images()
    for name in summary["registered"] + summary["unregistered"]:
        assert name in page
    assert page.count("data:image/jpeg;base64,") >= 2  # strongest and weakest pairs
    assert "Timings" in page and "hed_vgg16" in page
    assert path.stat().st_size < 2_000_000


def test_report_subsamples_points_and_escapes_what_it_reads(run_dir, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["warnings"] = ["<script>alert('x')</script></script><!-- warning"]
    (folder / "summary.json").write_text(json.dumps(summary))
    page = report.write_report(folder, max_points=10).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    data = json.loads(re.search(r'id="d2sfm-data">(.*?)</script>', page, re.S)[1])
    assert len(data["points"]["xyz"]) == 30 and data["points"]["total"] == summary["num_points3D"]


def test_report_of_a_localize_folder_lists_queries_inliers_and_errors(run_dir, tmp_path):
    folder = tmp_path / "loc"
    folder.mkdir()
    shutil.copytree(run_dir / "sfm", folder / "sfm_d2")
    shutil.copy(run_dir / "features.h5", folder / "features.h5")
    model = pycolmap.Reconstruction(str(run_dir / "sfm"))
    images = sorted(model.images.values(), key=lambda im: im.name)
    results = [QueryResult(images[0].name, images[0].cam_from_world(), 87, 120, 3, [images[1].name]),
               QueryResult("query/missing.jpg", None, 3, 9, 3, [], failure="3 inliers (< 12)")]
    summary = {"dataset": "aachen_v1_1", "root": str(run_dir.parent / "scene"), "num_queries": 2,
               "num_localized": 1, "failures": {"query/missing.jpg": "3 inliers (< 12)"},
               "queries": [r.to_json() for r in results], "timings_s": {"localize": 1.5},
               "evaluation": {"thresholds": [[0.25, 2.0]], "groups": {"all": {
                   "num_queries": 2, "recall": [0.5], "median_position_error": 0.1,
                   "median_rotation_error_deg": 0.5}},
                   "errors": {images[0].name: {"position": 0.012, "rotation_deg": 0.34}}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    page = report.write_report(folder).read_text()
    assert "Queries" in page and "query/missing.jpg" in page and "3 inliers (&lt; 12)" in page
    assert "0.012" in page and "50.0%" in page
    data = json.loads(re.search(r'id="d2sfm-data">(.*?)</script>', page, re.S)[1])
    assert [c["kind"] for c in data["cameras"]].count("query") == 1


def test_report_cli_refuses_a_folder_that_holds_no_run(tmp_path):
    assert run_cli(report.cli, [str(tmp_path / "nowhere")]) == EXIT_BAD_INPUT
    (tmp_path / "empty").mkdir()
    assert run_cli(report.cli, [str(tmp_path / "empty")]) == EXIT_BAD_INPUT
    assert not (tmp_path / "empty" / "report.html").exists()


def test_report_renders_in_headless_chromium(run_dir, tmp_path, chromium):
    page = report.write_report(run_dir)
    dom = run_browser(chromium, page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = re.search(r'<pre id="d2sfm-errors"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert errors is not None and errors[1].strip() == "", errors[1] if errors else dom.stdout[:2000]
    drawn = re.search(r'data-drawn-points="(\d+)"', dom.stdout)
    assert drawn is not None and int(drawn[1]) > 0  # the viewer ran and drew points

    shot = tmp_path / "report.png"
    result = run_browser(chromium, page, tmp_path, f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = cv2.imread(str(shot))
    background = np.all(np.abs(image.astype(int) - BACKGROUND_BGR) <= 2, axis=2)
    rows, cols = np.nonzero(background)
    assert len(rows) > 100_000, "the 3D canvas is not on the screenshot"
    canvas = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    drawn_pixels = ~background[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert drawn_pixels.sum() > 100  # points and camera frusta, not a blank canvas
    assert len(np.unique(canvas[drawn_pixels].reshape(-1, 3), axis=0)) > 10  # coloured points
