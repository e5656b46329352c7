"""Weighted bundle adjustment (featuremetric BA's Gauss-Newton model): recovery, anisotropic weighting,
agreement with pycolmap's bundle adjustment, robustness to outliers and points behind cameras."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from d2_sfm.colmap import pycolmap
from d2_sfm.refinement.bundle_solver import (BundleInputError, BundleSolverConfig, TargetIntrinsics, so3_exp,
                                             solve_weighted_bundle)

FOCAL, CENTRE = 1000.0, 500.0
NO_LOSS = BundleSolverConfig(loss_scale=1e9, max_iterations=50, function_tolerance=1e-14)


def look_at(centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cam_from_world (R, t) of a camera at `centre` looking at the origin."""
    z = -centre / np.linalg.norm(centre)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    rotation = np.stack([x, np.cross(z, x), z])
    return rotation, -rotation @ centre


def make_scene(seed: int, num_images: int = 6, num_points: int = 300):
    """Cameras on an arc (radius 5) around points in a unit cube; ~85 % of observations kept."""
    rng = np.random.default_rng(seed)
    poses = [look_at(np.array([5 * np.sin(a), 0.4 * np.cos(2 * a), -5 * np.cos(a)]))
             for a in np.deg2rad(np.linspace(-40, 40, num_images))]
    rotations = torch.tensor(np.stack([r for r, _ in poses]))  # (I, 3, 3)
    translations = torch.tensor(np.stack([t for _, t in poses]))  # (I, 3)
    points = torch.tensor(rng.uniform(-1, 1, (num_points, 3)))  # (P, 3)
    image, point = np.meshgrid(np.arange(num_images), np.arange(num_points), indexing="ij")
    keep = rng.random(image.shape) < 0.85
    keep[:2] = True  # every point seen by cameras 0 and 1
    image_index, point_index = torch.tensor(image[keep]), torch.tensor(point[keep])
    return rotations, translations, points, image_index, point_index, rng


def project(rotations, translations, points, image_index, point_index) -> torch.Tensor:
    cam = (rotations[image_index] @ points[point_index][..., None])[..., 0] + translations[image_index]
    return cam[:, :2] / cam[:, 2:]


def perturb(rotations, translations, points, rng, free: slice = slice(2, None)):
    """~0.5 deg rotations, 2 % of the baseline (~1.7) translations, 0.02 points; poses in `free` only."""
    rotations, translations = rotations.clone(), translations.clone()
    count = len(rotations[free])
    rotations[free] = so3_exp(torch.tensor(rng.normal(0, np.deg2rad(0.5) / np.sqrt(3), (count, 3)))) @ rotations[free]
    translations[free] += torch.tensor(rng.normal(0, 0.035 / np.sqrt(3), (count, 3)))
    return rotations, translations, points + torch.tensor(rng.normal(0, 0.02, points.shape))


def centres(rotations, translations) -> torch.Tensor:
    return -(rotations.transpose(1, 2) @ translations[..., None])[..., 0]


def pose_error(rotations, translations, true_rotations, true_translations) -> float:
    """Mean of rotation error (rad) + centre error over the cameras."""
    relative = rotations @ true_rotations.transpose(1, 2)
    angle = torch.arccos(((torch.diagonal(relative, dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1))
    shift = (centres(rotations, translations) - centres(true_rotations, true_translations)).norm(dim=1)
    return float((angle + shift).mean())


def two_fixed(num_images: int) -> torch.Tensor:
    constant = torch.zeros(num_images, dtype=torch.bool)
    constant[:2] = True
    return constant


def test_exact_targets_recover_the_ground_truth_and_leave_inputs_untouched():
    rotations, translations, points, image_index, point_index, rng = make_scene(0)
    targets = project(rotations, translations, points, image_index, point_index)
    start = perturb(rotations, translations, points, rng)
    copies = [t.clone() for t in start]
    information = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2) * FOCAL ** 2
    constant = two_fixed(len(rotations))
    new_r, new_t, new_x, report = solve_weighted_bundle(*start, image_index, point_index, targets, information,
                                                        constant, NO_LOSS)
    assert all(torch.equal(a, b) for a, b in zip(start, copies))
    assert report.converged and report.final_cost < 1e-12 * report.initial_cost
    assert torch.allclose(new_r, rotations, atol=1e-6) and torch.allclose(new_t, translations, atol=1e-6)
    assert torch.allclose(new_x, points, atol=1e-6)
    assert torch.equal(new_r[:2], start[0][:2]) and torch.equal(new_t[:2], start[1][:2])


def test_anisotropic_information_beats_identity_on_anisotropic_noise():
    rotations, translations, points, image_index, point_index, rng = make_scene(1)
    targets = project(rotations, translations, points, image_index, point_index)
    angle = torch.tensor(rng.uniform(0, np.pi, len(targets)))
    along = torch.stack([angle.cos(), angle.sin()], 1)  # (N, 2) direction of the large noise
    across = torch.stack([-angle.sin(), angle.cos()], 1)
    sigma_along, sigma_across = 5 / FOCAL, 0.1 / FOCAL  # an edge: 5 px along it, 0.1 px across
    noisy = targets + along * torch.tensor(rng.normal(0, sigma_along, (len(targets), 1))) \
        + across * torch.tensor(rng.normal(0, sigma_across, (len(targets), 1)))
    weighted = (along[:, :, None] * along[:, None] / sigma_along ** 2
                + across[:, :, None] * across[:, None] / sigma_across ** 2)  # (N, 2, 2)
    identity = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2) / sigma_along ** 2
    start = perturb(rotations, translations, points, rng)
    constant = two_fixed(len(rotations))
    errors = {}
    for name, information in (("weighted", weighted), ("identity", identity)):
        new_r, new_t, _, report = solve_weighted_bundle(*start, image_index, point_index, noisy, information,
                                                        constant)
        assert report.final_cost < report.initial_cost
        errors[name] = pose_error(new_r, new_t, rotations, translations)
    assert errors["weighted"] < 0.3 * errors["identity"], errors


def pycolmap_bundle(rotations, translations, points, image_index, point_index, pixels, constant):
    """pycolmap (Ceres) bundle adjustment of the same problem, PINHOLE f=1000, fixed intrinsics."""
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=1000, height=1000,
                                                               params=[FOCAL, FOCAL, CENTRE, CENTRE], camera_id=1))
    observation_slot = {}
    for i in range(len(rotations)):
        mine = torch.nonzero(image_index == i).squeeze(1).tolist()
        observation_slot.update({n: k for k, n in enumerate(mine)})
        image = pycolmap.Image(name=f"{i}.jpg", camera_id=1, image_id=i + 1,
                               points2D=[pycolmap.Point2D(pixels[n].numpy()) for n in mine])
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(rotations[i].numpy()), translations[i].numpy())
        reconstruction.add_image_with_trivial_frame(image, pose)
    point_ids = []
    for p in range(len(points)):
        track = pycolmap.Track()
        for n in torch.nonzero(point_index == p).squeeze(1).tolist():
            track.add_element(int(image_index[n]) + 1, observation_slot[n])
        point_ids.append(reconstruction.add_point3D(points[p].numpy(), track))
    config = pycolmap.BundleAdjustmentConfig()
    for i in range(len(rotations)):
        config.add_image(i + 1)
        if constant[i]:
            config.set_constant_rig_from_world_pose(reconstruction.images[i + 1].frame_id)
    config.set_constant_cam_intrinsics(1)
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    solver = options.ceres.solver_options
    solver.function_tolerance, solver.gradient_tolerance, solver.parameter_tolerance = 1e-15, 1e-15, 1e-15
    solver.max_num_iterations, solver.num_threads = 100, 1
    pycolmap.create_default_bundle_adjuster(options, config, reconstruction).solve()
    poses = [reconstruction.images[i + 1].cam_from_world().matrix() for i in range(len(rotations))]
    return (torch.tensor(np.stack([m[:, :3] for m in poses])), torch.tensor(np.stack([m[:, 3] for m in poses])),
            torch.tensor(np.stack([reconstruction.points3D[k].xyz for k in point_ids])))


def test_identity_information_matches_pycolmap_bundle_adjustment():
    rotations, translations, points, image_index, point_index, rng = make_scene(2, num_images=5, num_points=80)
    targets = project(rotations, translations, points, image_index, point_index)
    targets = targets + torch.tensor(rng.normal(0, 0.5 / FOCAL, targets.shape))  # 0.5 px noise
    start = perturb(rotations, translations, points, rng)
    constant = two_fixed(len(rotations))
    information = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2) * FOCAL ** 2  # costs in px^2
    ours = solve_weighted_bundle(*start, image_index, point_index, targets, information, constant, NO_LOSS)
    theirs = pycolmap_bundle(*start, image_index, point_index, FOCAL * targets + CENTRE, constant)
    assert ours[3].converged and ours[3].final_cost < 0.01 * ours[3].initial_cost
    moved = (ours[2] - start[2]).abs().max()
    assert moved > 1e-3  # the solution is far from the start, so agreement is not trivial
    for mine, reference in zip(ours[:3], theirs):
        assert torch.allclose(mine, reference, atol=1e-7), (mine - reference).abs().max()


def radial_camera(focal: float, k: float) -> pycolmap.Camera:
    return pycolmap.Camera(model="SIMPLE_RADIAL", width=1000, height=1000, params=[focal, CENTRE, CENTRE, k])


def test_free_intrinsics_recover_the_true_focal_length_and_distortion():
    """Exact pixels of a SIMPLE_RADIAL camera (f 1000, k 0.03) read through a wrong one (f 995, k 0):
    with the targets' Jacobians the solve finds the intrinsics' error and the poses; without, it cannot."""
    rotations, translations, points, image_index, point_index, rng = make_scene(4)
    normal = project(rotations, translations, points, image_index, point_index).numpy()
    pixels = radial_camera(FOCAL, 0.03).img_from_cam(np.c_[normal, np.ones(len(normal))])
    wrong = np.array([995.0, 0.0])
    targets = torch.from_numpy(radial_camera(*wrong).cam_from_img(pixels))
    jacobians = np.zeros((len(pixels), 2, 2))
    for column, step in enumerate(np.diag([1e-3, 1e-6])):
        jacobians[:, :, column] = (radial_camera(*(wrong + step)).cam_from_img(pixels)
                                   - radial_camera(*(wrong - step)).cam_from_img(pixels)) / (2 * step.sum())
    intrinsics = TargetIntrinsics(torch.zeros(len(pixels), dtype=torch.long), torch.from_numpy(jacobians), 1)
    start = perturb(rotations, translations, points, rng)
    information = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2) * FOCAL ** 2
    fixed = solve_weighted_bundle(*start, image_index, point_index, targets, information, two_fixed(len(rotations)),
                                  NO_LOSS)
    free = solve_weighted_bundle(*start, image_index, point_index, targets, information, two_fixed(len(rotations)),
                                 NO_LOSS, intrinsics)
    assert fixed[3].intrinsics_step is None and fixed[3].final_cost > 1.0  # a wrong camera leaves pixels of error
    step = free[3].intrinsics_step[0].numpy()
    assert abs(step[0] - 5.0) < 0.1 and abs(step[1] - 0.03) < 0.002, step  # linearised targets: not exact
    assert free[3].final_cost < 1e-3 * fixed[3].final_cost
    assert pose_error(free[0], free[1], rotations, translations) < 1e-4 < pose_error(fixed[0], fixed[1], rotations,
                                                                                     translations)
    with pytest.raises(BundleInputError, match="intrinsics: camera indices out of range"):
        solve_weighted_bundle(*start, image_index, point_index, targets, information, two_fixed(len(rotations)),
                              NO_LOSS, TargetIntrinsics(intrinsics.camera_index + 1, intrinsics.jacobians, 1))


def test_cauchy_loss_resists_an_outlier_and_points_behind_cameras_give_no_nan():
    rotations, translations, points, image_index, point_index, _ = make_scene(3, num_points=60)
    targets = project(rotations, translations, points, image_index, point_index)
    information = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2) * FOCAL ** 2
    outlier = int(torch.nonzero(point_index == 7)[0])
    targets[outlier, 0] += 50 / FOCAL  # 50 whitened units
    # point 8 is moved behind camera 0 (its other observations still fit the old position poorly)
    behind = points.clone()
    behind[8] = centres(rotations, translations)[0] - 2 * rotations[0, 2]
    # point 9's observations in camera 0 sit exactly at the camera centre (depth 0)
    behind[9] = centres(rotations, translations)[0]
    constant = two_fixed(len(rotations))
    moves = {}
    for name, config in (("cauchy", BundleSolverConfig()), ("l2", NO_LOSS)):
        new_r, new_t, new_x, report = solve_weighted_bundle(rotations, translations, behind, image_index,
                                                            point_index, targets, information, constant, config)
        assert all(bool(torch.isfinite(t).all()) for t in (new_r, new_t, new_x))
        assert np.isfinite(report.initial_cost) and np.isfinite(report.final_cost)
        assert report.final_cost <= report.initial_cost
        moves[name] = float((new_x[7] - points[7]).norm())
    assert moves["cauchy"] < 0.1 * moves["l2"], moves


def test_inconsistent_inputs_raise_one_clear_error():
    rotations, translations, points, image_index, point_index, _ = make_scene(4, num_points=10)
    targets = project(rotations, translations, points, image_index, point_index)
    information = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2)
    constant = two_fixed(len(rotations))
    with pytest.raises(BundleInputError, match="observation indices out of range"):
        solve_weighted_bundle(rotations, translations, points, image_index, point_index + 10, targets, information,
                              constant)
    with pytest.raises(BundleInputError, match="targets must be"):
        solve_weighted_bundle(rotations, translations, points, image_index, point_index, targets[:-1], information,
                              constant)
    indefinite = information.clone()
    indefinite[3, 1, 1] = -1
    with pytest.raises(BundleInputError, match="positive semi-definite"):
        solve_weighted_bundle(rotations, translations, points, image_index, point_index, targets, indefinite, constant)


def test_degenerate_problems_return_copies_of_the_input():
    """All poses constant with exact points: nothing to do; no observations at all: nothing to do."""
    rotations, translations, points, image_index, point_index, _ = make_scene(6, num_points=20)
    targets = project(rotations, translations, points, image_index, point_index)
    information = torch.eye(2, dtype=torch.float64).expand(len(targets), 2, 2)
    everything = torch.ones(len(rotations), dtype=torch.bool)
    new_r, new_t, new_x, report = solve_weighted_bundle(rotations, translations, points, image_index, point_index,
                                                        targets, information, everything)
    assert report.converged and report.initial_cost == 0 and report.iterations == 0
    assert torch.equal(new_x, points) and new_x is not points
    empty = torch.zeros(0, dtype=torch.long)
    new_r, _, _, report = solve_weighted_bundle(rotations, translations, points, empty, empty, targets[:0],
                                                information[:0], everything)
    assert report.converged and torch.equal(new_r, rotations) and new_r is not rotations


def test_split_duplicate_observations_give_the_same_solution():
    """Each observation twice with half the information (plus a zero-information copy with a wrong target),
    shuffled: the same least-squares problem, so the same solution (exercises same-image pairs)."""
    rotations, translations, points, image_index, point_index, rng = make_scene(5, num_images=5, num_points=80)
    targets = project(rotations, translations, points, image_index, point_index)
    targets = targets + torch.tensor(rng.normal(0, 0.5 / FOCAL, targets.shape))
    angle = torch.tensor(rng.uniform(0, np.pi, len(targets)))
    along = torch.stack([angle.cos(), angle.sin()], 1)
    information = FOCAL ** 2 * (0.2 * along[:, :, None] * along[:, None] + torch.eye(2, dtype=torch.float64))
    start = perturb(rotations, translations, points, rng)
    constant = two_fixed(len(rotations))
    single = solve_weighted_bundle(*start, image_index, point_index, targets, information, constant, NO_LOSS)
    order = torch.tensor(rng.permutation(3 * len(targets)))
    tripled = solve_weighted_bundle(*start, image_index.repeat(3)[order], point_index.repeat(3)[order],
                                    torch.cat([targets, targets, targets + 1])[order],
                                    torch.cat([information / 2, information / 2, 0 * information])[order],
                                    constant, NO_LOSS)
    assert single[3].converged and tripled[3].converged
    assert abs(single[3].final_cost - tripled[3].final_cost) < 1e-9 * single[3].final_cost
    for a, b in zip(single[:3], tripled[:3]):
        assert torch.allclose(a, b, atol=1e-9)
