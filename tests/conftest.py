"""Shared test fixtures. Tests run offline: the default weights resolve to hed_vgg16."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2  # noqa: F401  (pycolmap 4.2.1 must be imported after cv2, see the pycolmap tour)
import pytest

os.environ.setdefault("D2_SFM_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def hed_extractor_factory():
    """Builds D2Extractors with the offline weights, loading the checkpoint once per config."""
    from d2_sfm.extractor import D2Extractor, ExtractionConfig

    cache: dict[ExtractionConfig, D2Extractor] = {}

    def make(**config) -> D2Extractor:
        key = ExtractionConfig(**config)
        if key not in cache:
            cache[key] = D2Extractor("hed_vgg16", key)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def small_reconstruction(tmp_path_factory) -> Path:
    """A real reconstruct output folder, made once per session: 6 views of the sample scene at
    320 x 240 with hed_vgg16 (about 15 s), without refinement (the refinement tests start from its
    raw keypoints and model). Its scene is in ../scene/images. Copy it before changing it."""
    from d2_sfm import reconstruct
    from d2_sfm.configs import RefineConfig
    from d2_sfm.datasets.sample_scene import write_sample_scene
    from d2_sfm.extractor import ExtractionConfig

    root = tmp_path_factory.mktemp("small_reconstruction")
    scene = write_sample_scene(root / "scene", num_views=6, size=(320, 240))
    config = reconstruct.ReconstructionConfig(weights="hed_vgg16", extraction=ExtractionConfig(max_edge=320),
                                              refine=RefineConfig(mode="none"))
    reconstruct.main(scene / "images", root / "out", config)
    return root / "out"


@pytest.fixture(scope="module")
def run_dir(small_reconstruction, tmp_path_factory) -> Path:
    """A test module's own copy of the session's small reconstruction (and of its scene)."""
    root = tmp_path_factory.mktemp("run")
    shutil.copytree(small_reconstruction.parent / "scene", root / "scene")
    shutil.copytree(small_reconstruction, root / "out")
    return root / "out"
