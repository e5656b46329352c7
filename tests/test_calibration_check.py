"""The self-calibration check: a focal length the matches leave undetermined flags the model.

Exact synthetic models (projections plus 0.5 px noise) in real pycolmap reconstructions: a wide field
of view seen from a wide arc determines the focal length; a telephoto seen from a few nearby views
does not (the focal trades off against the rotations, as on the Middlebury temple)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pycolmap
import pytest

from d2_sfm.colmap_import import PairStats
from d2_sfm.reconstruction.calibration import focal_uncertainties, rms_reprojection_error
from d2_sfm.reconstruction.reliability import ReliabilityConfig, assess_model
from synthetic_colmap_scene import look_at

WIDTH, HEIGHT = 640, 480


def synthetic_model(focal: float, num_views: int, arc_deg: float, noise_px: float = 0.5, seed: int = 0,
                    lone_view_points: int | None = None) -> pycolmap.Reconstruction:
    """SIMPLE_RADIAL views on an arc around random points; observations with Gaussian noise.
    `lone_view_points`: the last view has a camera of its own and observes only that many points."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-1.5, -1.0, -1.0], [1.5, 1.0, 1.0], size=(600, 3))
    camera = pycolmap.Camera(camera_id=1, model="SIMPLE_RADIAL", width=WIDTH, height=HEIGHT,
                             params=[focal, WIDTH / 2, HEIGHT / 2, 0.0])
    distance = 4.0 * focal / 500.0  # the object fills the image whatever the focal length
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(camera)
    if lone_view_points is not None:
        reconstruction.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=2, model="SIMPLE_RADIAL", width=WIDTH,
                                                                   height=HEIGHT, params=camera.params))
    observations: dict[int, list[tuple[int, int]]] = {}
    for image_id in range(1, num_views + 1):
        angle = np.deg2rad(arc_deg * ((image_id - 1) / (num_views - 1) - 0.5))
        pose = look_at(np.array([distance * np.sin(angle), 0.3 * np.cos(2 * angle), -distance * np.cos(angle)]),
                       np.zeros(3))
        uv = camera.img_from_cam(points @ pose.rotation.matrix().T + pose.translation)
        uv = uv + rng.normal(0, noise_px, uv.shape)
        lone = lone_view_points is not None and image_id == num_views
        image = pycolmap.Image(name=f"view{image_id}.jpg", camera_id=2 if lone else 1, image_id=image_id,
                               keypoints=uv)
        reconstruction.add_image_with_trivial_frame(image, pose)
        for p in range(lone_view_points if lone else len(points)):
            observations.setdefault(p, []).append((image_id, p))
    for p, elements in observations.items():
        track = pycolmap.Track()
        for image_id, index in elements:
            track.add_element(image_id, index)
        reconstruction.add_point3D(points[p], track)
    reconstruction.update_point_3d_errors()
    return reconstruction


@pytest.fixture(scope="module")
def wide():
    return synthetic_model(focal=450.0, num_views=8, arc_deg=60.0)


@pytest.fixture(scope="module")
def telephoto():
    return synthetic_model(focal=2000.0, num_views=4, arc_deg=12.0)


def test_the_focal_deviation_separates_a_determined_from_an_undetermined_focal(wide, telephoto):
    assert rms_reprojection_error(wide) == pytest.approx(0.5 * np.sqrt(2), rel=0.1)  # 0.5 px per axis
    wide_deviation = focal_uncertainties(wide, [1])[1]
    telephoto_deviation = focal_uncertainties(telephoto, [1])[1]
    limit = ReliabilityConfig().max_focal_uncertainty
    assert 0 < wide_deviation < limit / 4, wide_deviation
    assert telephoto_deviation > 2 * limit, telephoto_deviation


def test_the_deviation_scales_with_the_reprojection_noise(wide):
    quieter = synthetic_model(focal=450.0, num_views=8, arc_deg=60.0, noise_px=0.25)
    ratio = focal_uncertainties(quieter, [1])[1] / focal_uncertainties(wide, [1])[1]
    assert ratio == pytest.approx(0.5, rel=0.15)


def strong_pairs(model: pycolmap.Reconstruction) -> list[PairStats]:
    """Every pair verified with 600 inliers: only the cameras can make the assessment fail."""
    names = sorted(image.name for image in model.images.values())
    return [PairStats(a, b, 600, 600, "CALIBRATED", kept=True) for i, a in enumerate(names) for b in names[i + 1:]]


def assess(model: pycolmap.Reconstruction, source: str, config: ReliabilityConfig = ReliabilityConfig()):
    sources = {image.name: source for image in model.images.values()}
    return assess_model(model, strong_pairs(model), sources, {}, model.num_images(), config)


def test_assessment_flags_an_undetermined_self_calibration_only(wide, telephoto):
    for source, model, flagged in (("default", telephoto, True), ("exif", telephoto, True),
                                   ("known", telephoto, False), ("default", wide, False)):
        assessment = assess(model, source)
        warnings = [w for w in assessment.warnings if "do not determine the focal length" in w]
        assert bool(warnings) == flagged, (source, assessment.warnings)
        assert (assessment.status == "unreliable") == flagged, (source, assessment.status)
        if flagged:
            assert "of 4 of 4 registered images: camera 1 (view1.jpg, ...): focal length 2000 px +-" in warnings[0]
            assert "--camera-params" in warnings[0]


def test_one_image_with_an_undetermined_camera_of_its_own_is_not_a_model_failure():
    """The last view of the well-determined model gets a camera of its own and sees 4 points:
    that camera is undetermined, but it holds 1 of 8 images."""
    model = synthetic_model(focal=450.0, num_views=8, arc_deg=60.0, lone_view_points=4)
    deviations = focal_uncertainties(model, [1, 2])
    assert deviations[2] > ReliabilityConfig().max_focal_uncertainty > deviations[1], deviations
    few_points = ReliabilityConfig(min_image_points3D=4)  # judge the camera alone, not the point count
    assessment = assess(model, "exif", few_points)
    assert assessment.status == "ok", assessment.warnings
    assert assessment.focal_uncertainty == deviations
    strict = replace(few_points, max_undetermined_share=0.1)
    assert "1 of 8 registered images: camera 2 (view8.jpg)" in assess(model, "exif", strict).warnings[0]


def test_large_models_skip_the_covariance(telephoto):
    assessment = assess(telephoto, "default", ReliabilityConfig(calibration_max_images=3))
    assert assessment.status == "ok", assessment.warnings
