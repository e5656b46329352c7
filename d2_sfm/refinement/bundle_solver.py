"""Weighted bundle adjustment in torch: the Gauss-Newton model of featuremetric bundle adjustment.

Minimises  0.5 * sum_ij rho(r_ij^T W_ij r_ij),  r_ij = pi(R_i X_j + t_i) - t_ij,  over the free
cam_from_world poses and the 3D points, with a pure pinhole projection pi(X) = (x/z, y/z) in normalised
image coordinates, a full 2x2 information matrix W_ij per observation (anisotropic keypoint
uncertainty) and a Cauchy loss rho(s) = c^2 log(1 + s / c^2) on the squared whitened residual.

Self-calibration (optional, `TargetIntrinsics`): a target is where its keypoint lands on the normalised
plane through its camera's intrinsics, so it moves with them: t_ij = t0_ij + D_ij dtheta_c, linearised
at the intrinsics mapping left (D_ij = d t_ij / d theta_c, a few parameters per camera: focal length
and distortion). The steps dtheta_c join the poses in the reduced system.

Levenberg-Marquardt (Ceres-style diagonal damping, Nielsen update), normal equations reduced to the
free poses and intrinsics by the Schur complement on the per-point 3x3 blocks, dense Cholesky on the
reduced system.
Pose update (left perturbation of the whole rigid transform in the camera frame):
    R <- exp([w]x) R,   t <- exp([w]x) t + dt,
so a rotation step turns the camera about its own centre rather than the world origin.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import D2SfmError

logger = logging.getLogger(__name__)
MIN_DEPTH = 1e-6
MIN_DAMPING = 1e-10  # keeps the free scale (a single constant pose) and other null directions damped
PAIR_CHUNK = 1 << 19  # observation pairs per Schur-complement chunk (bounds the (chunk, S, S) temporaries)


class BundleInputError(D2SfmError, ValueError):
    """Bundle-adjustment inputs with bad shapes, dtypes, indices, non-finite values or indefinite information."""


@dataclass(frozen=True)
class BundleSolverConfig:
    """Levenberg-Marquardt settings of the weighted bundle adjustment."""
    max_iterations: int = 30
    loss_scale: float = 2.0  # Cauchy scale on the whitened residual norm (units of sqrt(information))
    function_tolerance: float = 1e-8  # relative cost decrease to stop
    initial_damping: float = 1e-4


@dataclass(frozen=True)
class TargetIntrinsics:
    """How the targets move with free intrinsics: t = targets + jacobians @ dtheta[camera_index]."""
    camera_index: torch.Tensor  # (N,) int64: the free intrinsics block of each observation's camera, -1: fixed
    jacobians: torch.Tensor  # (N, 2, K) float64: d target / d theta (zero-padded to K parameters per camera)
    num_cameras: int  # C blocks of K parameters


@dataclass
class BundleSolverReport:
    """Costs are 0.5 * sum rho(r^T W r) over the active observations; iterations count rejected steps too."""
    initial_cost: float
    final_cost: float
    iterations: int
    converged: bool
    intrinsics_step: torch.Tensor | None = None  # (C, K) dtheta of the free intrinsics (TargetIntrinsics)


@dataclass
class _Problem:
    """Fixed structure of a problem (built once, shared by all LM iterations). The reduced system's
    unknowns: 6 per free pose (rotation, translation), then K per free intrinsics block."""
    image_index: torch.Tensor  # (N,)
    point_index: torch.Tensor  # (N,)
    targets: torch.Tensor  # (N, 2) at dtheta = 0
    information: torch.Tensor  # (N, 2, 2)
    variable_point: torch.Tensor  # (P,) bool: seen from >= 2 distinct images
    free_slot: torch.Tensor  # (I,) int64: index among the free poses, -1 for constant poses
    num_free: int
    camera_index: torch.Tensor  # (N,) int64: free intrinsics block, -1: none
    target_jacobians: torch.Tensor  # (N, 2, K)
    num_cameras: int
    unknowns: torch.Tensor  # (N, 6 + K) int64: each observation's unknowns in the reduced system, -1: fixed
    # ordered pairs (first, second) of observations of the same variable point, and the reduced-system
    # block each one's Schur term lands in: pose x pose (lower block triangle, flat slot_a * F + slot_b),
    # intrinsics x pose (camera_a * F + slot_b), intrinsics x intrinsics (camera_a * C + camera_b)
    pose_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    camera_pose_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    camera_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @property
    def num_reduced(self) -> int:
        return 6 * self.num_free + self.target_jacobians.shape[2] * self.num_cameras


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices [v]x."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices (Rodrigues, Taylor series near zero)."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta2 < 1e-12
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    k = skew(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def _symmetric_psd(matrices: torch.Tensor) -> bool:
    """(N, 2, 2) -> whether all are symmetric positive semi-definite (up to rounding)."""
    a, b, c, d = matrices.reshape(-1, 4).unbind(1)
    size = matrices.abs().amax((1, 2))
    tolerance = 1e-9 * size
    return bool(((b - c).abs() <= tolerance).all() and (a >= -tolerance).all() and (d >= -tolerance).all()
                and (a * d - b * c >= -tolerance * size).all())


def _check_inputs(rotations, translations, points, image_index, point_index, targets, information,
                  constant_poses, intrinsics: TargetIntrinsics | None) -> None:
    num_images, num_points, num_obs = len(rotations), len(points), len(image_index)
    problems = {
        "rotations must be (I, 3, 3)": rotations.shape[1:] != (3, 3),
        "translations must be (I, 3)": translations.shape != (num_images, 3),
        "points must be (P, 3)": points.ndim != 2 or points.shape[1] != 3,
        "image_index/point_index must be (N,) int64": image_index.shape != (num_obs,)
        or point_index.shape != (num_obs,) or image_index.dtype != torch.int64 or point_index.dtype != torch.int64,
        "targets must be (N, 2)": targets.shape != (num_obs, 2),
        "information must be (N, 2, 2)": information.shape != (num_obs, 2, 2),
        "constant_poses must be (I,) bool": constant_poses.shape != (num_images,) or constant_poses.dtype != torch.bool,
    }
    bad = [message for message, failed in problems.items() if failed]
    if not bad:
        floats = (rotations, translations, points, targets, information)
        if any(t.dtype != torch.float64 for t in floats):
            bad.append("poses, points, targets and information must be float64")
        elif not all(bool(torch.isfinite(t).all()) for t in floats):
            bad.append("poses, points, targets and information must be finite")
        elif num_obs and not _symmetric_psd(information):
            bad.append("information matrices must be symmetric positive semi-definite")
        if num_obs and (int(image_index.min()) < 0 or int(image_index.max()) >= num_images
                        or int(point_index.min()) < 0 or int(point_index.max()) >= num_points):
            bad.append("observation indices out of range")
    if not bad and intrinsics is not None:
        jacobians, camera_index = intrinsics.jacobians, intrinsics.camera_index
        if (camera_index.shape != (num_obs,) or camera_index.dtype != torch.int64 or jacobians.ndim != 3
                or jacobians.shape[:2] != (num_obs, 2) or jacobians.dtype != torch.float64):
            bad.append("intrinsics: camera_index must be (N,) int64 and jacobians (N, 2, K) float64")
        elif not bool(torch.isfinite(jacobians).all()):
            bad.append("intrinsics: jacobians must be finite")
        elif num_obs and (int(camera_index.min()) < -1 or int(camera_index.max()) >= intrinsics.num_cameras):
            bad.append("intrinsics: camera indices out of range")
    if bad:
        raise BundleInputError(f"weighted bundle adjustment: {'; '.join(bad)}")


def _same_point_pairs(point_index: torch.Tensor, observations: torch.Tensor, num_points: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (a, b) of `observations` (M,) that see the same point, a == b included."""
    observations = observations[torch.argsort(point_index[observations], stable=True)]
    point_of = point_index[observations]  # (M,) sorted
    counts = torch.bincount(point_of, minlength=num_points)  # (P,)
    starts = counts.cumsum(0) - counts
    per = counts[point_of]  # (M,) how many observations its point has
    first = torch.repeat_interleave(torch.arange(len(observations)), per)  # (Q,)
    offset = torch.repeat_interleave(per.cumsum(0) - per, per)
    second = starts[point_of][first] + torch.arange(len(first)) - offset
    return observations[first], observations[second]


def _build_problem(num_images: int, num_points: int, image_index: torch.Tensor, point_index: torch.Tensor,
                   targets: torch.Tensor, information: torch.Tensor, constant_poses: torch.Tensor,
                   intrinsics: TargetIntrinsics | None) -> _Problem:
    constant = constant_poses.clone()
    if not bool(constant.any()) and num_images:
        constant[0] = True  # gauge: hold the first pose (the scale stays free, damping keeps it put)
    free = ~constant
    free_slot = torch.where(free, free.long().cumsum(0) - 1, torch.full((num_images,), -1, dtype=torch.long))
    num_free = int(free.sum())
    num_obs = len(image_index)
    if intrinsics is None:
        camera_index = torch.full((num_obs,), -1, dtype=torch.long)
        jacobians, num_cameras = torch.zeros((num_obs, 2, 0), dtype=torch.float64), 0
    else:
        camera_index, jacobians, num_cameras = intrinsics.camera_index, intrinsics.jacobians, intrinsics.num_cameras
    size = jacobians.shape[2]
    # the reduced system's unknowns of each observation: its pose's 6, then its camera's K
    pose_slot = free_slot[image_index]  # (N,)
    unknowns = torch.cat([torch.where(pose_slot[:, None] >= 0, pose_slot[:, None] * 6 + torch.arange(6), -1),
                          torch.where(camera_index[:, None] >= 0,
                                      6 * num_free + camera_index[:, None] * size + torch.arange(size), -1)], 1)
    # points seen from >= 2 distinct images are variable; the others stay fixed and their observations are dropped
    distinct = torch.unique(point_index * num_images + image_index)
    variable_point = torch.bincount(distinct // num_images, minlength=num_points) >= 2
    structural = torch.nonzero(variable_point[point_index] & ((pose_slot >= 0) | (camera_index >= 0))).squeeze(1)
    first, second = _same_point_pairs(point_index, structural, num_points)
    slot_a, slot_b = pose_slot[first], pose_slot[second]
    camera_a, camera_b = camera_index[first], camera_index[second]

    def pairs(chosen: torch.Tensor, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return first[chosen], second[chosen], block[chosen]

    return _Problem(image_index, point_index, targets, information, variable_point, free_slot, num_free,
                    camera_index, jacobians, num_cameras, unknowns,
                    pairs((slot_a >= 0) & (slot_b >= 0) & (slot_a >= slot_b), slot_a * num_free + slot_b),
                    pairs((camera_a >= 0) & (slot_b >= 0), camera_a * num_free + slot_b),
                    pairs((camera_a >= 0) & (camera_b >= 0), camera_a * num_cameras + camera_b))


def _targets(problem: _Problem, intrinsics: torch.Tensor) -> torch.Tensor:
    """(N, 2) targets at the intrinsics steps (C, K)."""
    if problem.num_cameras == 0:
        return problem.targets
    moved = (problem.target_jacobians @ intrinsics[problem.camera_index.clamp(min=0)][..., None])[..., 0]
    return problem.targets + torch.where(problem.camera_index[:, None] >= 0, moved, torch.zeros_like(moved))


def _residuals(problem: _Problem, usable: torch.Tensor, rotations: torch.Tensor, translations: torch.Tensor,
               points: torch.Tensor, intrinsics: torch.Tensor):
    """Camera-frame points (N, 3), residuals (N, 2), squared whitened norms (N,), active mask (N,).
    An observation is active when usable (N,), in front of its camera and its point has >= 2 such ones."""
    cam_points = (rotations[problem.image_index] @ points[problem.point_index][..., None])[..., 0] \
        + translations[problem.image_index]  # (N, 3)
    depth = cam_points[:, 2]
    valid = usable & (depth > MIN_DEPTH) & torch.isfinite(cam_points).all(1)
    projected = cam_points[:, :2] / torch.where(valid, depth, torch.ones_like(depth))[:, None]
    residuals = torch.where(valid[:, None], projected - _targets(problem, intrinsics),
                            torch.zeros_like(projected))  # (N, 2)
    squared = torch.einsum("ni,nij,nj->n", residuals, problem.information, residuals).clamp_min(0)
    valid_count = torch.zeros(len(problem.variable_point), dtype=torch.long).index_add_(0, problem.point_index,
                                                                                       valid.long())
    active = valid & (valid_count[problem.point_index] >= 2)
    return cam_points, residuals, squared, active


def _cauchy(squared: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cauchy loss rho(s) and its derivative rho'(s) (the IRLS weight) on squared whitened norms."""
    c2 = scale * scale
    return c2 * torch.log1p(squared / c2), 1 / (1 + squared / c2)


def _normal_equations(problem: _Problem, rotations, cam_points, residuals, squared, active, scale: float):
    """Per-observation Jacobian blocks and gradients, accumulated (IRLS weights, active observations):
    the reduced-system side (its pose's 6 unknowns, then its camera's K) and the point side."""
    x, y, z = cam_points.unbind(1)
    inv_z = 1 / torch.where(active, z, torch.ones_like(z))
    zero = torch.zeros_like(z)
    d_proj = torch.stack([inv_z, zero, -x * inv_z ** 2, zero, inv_z, -y * inv_z ** 2], 1).reshape(-1, 2, 3)
    j_pose = torch.cat([d_proj @ skew(-cam_points), d_proj], 2)  # (N, 2, 6): d r / d(w, dt)
    j_side = torch.cat([j_pose, -problem.target_jacobians], 2)  # (N, 2, 6 + K): r = pi - (t0 + D dtheta)
    j_point = d_proj @ rotations[problem.image_index]  # (N, 2, 3): d r / d X
    weight = torch.where(active, _cauchy(squared, scale)[1], torch.zeros_like(squared))  # (N,)
    weighted_info = problem.information * weight[:, None, None]  # (N, 2, 2)
    w_side, w_point = weighted_info @ j_side, weighted_info @ j_point  # (N, 2, 6 + K), (N, 2, 3)
    side_side = j_side.transpose(1, 2) @ w_side  # (N, S, S)
    side_point = w_side.transpose(1, 2) @ j_point  # (N, S, 3)
    point_point = j_point.transpose(1, 2) @ w_point  # (N, 3, 3)
    grad_side = (w_side.transpose(1, 2) @ residuals[..., None])[..., 0]  # (N, S)
    grad_point = (w_point.transpose(1, 2) @ residuals[..., None])[..., 0]  # (N, 3)
    return side_side, side_point, point_point, grad_side, grad_point


def _accumulate(blocks: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], e: torch.Tensor,
                side_point: torch.Tensor, rows: slice, cols: slice) -> None:
    """blocks (B, r, c) -= e[a][rows] side_point[b][cols]^T summed into each pair's block, in chunks."""
    first, second, block = pairs
    if len(first) == 0:
        return
    flat = blocks.view(len(blocks), blocks.shape[1] * blocks.shape[2])
    for start in range(0, len(first), PAIR_CHUNK):
        a, b = first[start:start + PAIR_CHUNK], second[start:start + PAIR_CHUNK]
        terms = e[a][:, rows] @ side_point[b][:, cols].transpose(1, 2)
        flat.index_add_(0, block[start:start + PAIR_CHUNK], terms.flatten(1), alpha=-1)


def _block_matrix(blocks: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, r, c) blocks, row-major -> the (rows r, cols c) matrix they tile."""
    r, c = blocks.shape[1:]
    return blocks.reshape(rows, cols, r, c).permute(0, 2, 1, 3).reshape(rows * r, cols * c)


def _solve_step(problem: _Problem, blocks, damping: float):
    """Damped LM step (reduced steps (R,), point steps (P, 3), predicted decrease) or None (not PD)."""
    side_side, side_point, point_point, grad_side, grad_point = blocks
    size, num_points, unknowns = problem.num_reduced, len(problem.variable_point), problem.unknowns
    num_free, num_cameras, k = problem.num_free, problem.num_cameras, problem.target_jacobians.shape[2]
    has = unknowns >= 0  # (N, S)
    g_c = torch.zeros(size, dtype=torch.float64).index_add_(0, unknowns[has], grad_side[has])
    v = torch.zeros(num_points, 9, dtype=torch.float64).index_add_(0, problem.point_index,
                                                                     point_point.reshape(-1, 9)).reshape(-1, 3, 3)
    g_p = torch.zeros(num_points, 3, dtype=torch.float64).index_add_(0, problem.point_index, grad_point)
    diag_v = torch.diagonal(v, dim1=1, dim2=2).clamp(1e-6, 1e32)  # (P, 3) Ceres-style LM diagonal
    # points with < 2 active observations have no observations in the system: hold them (identity block)
    held = torch.diagonal(v, dim1=1, dim2=2).sum(1) <= 0
    v = v + torch.diag_embed(damping * diag_v)
    v[held] = torch.eye(3, dtype=torch.float64)
    chol_v, info_v = torch.linalg.cholesky_ex(v)
    if bool(info_v.any()):
        return None
    v_inv = torch.cholesky_inverse(chol_v)  # (P, 3, 3)
    # Schur complement on the points: S = U - sum B V^-1 B^T,  rhs = -g_c + sum B V^-1 g_p, assembled
    # in blocks: pose x pose (lower triangle: Cholesky reads only that), intrinsics x pose, intrinsics x intrinsics
    e = side_point @ v_inv[problem.point_index]  # (N, S, 3)
    if size:
        rhs = -g_c.index_add(0, unknowns[has], -(e @ g_p[problem.point_index][..., None])[..., 0][has])
        slot, camera = problem.free_slot[problem.image_index], problem.camera_index
        pose_blocks = torch.zeros(num_free * num_free, 6, 6, dtype=torch.float64)
        camera_pose_blocks = torch.zeros(num_cameras * num_free, k, 6, dtype=torch.float64)
        camera_blocks = torch.zeros(num_cameras * num_cameras, k, k, dtype=torch.float64)
        pose, intrinsic = slice(0, 6), slice(6, 6 + k)
        for target, chosen, block, rows, cols in (
                (pose_blocks, slot >= 0, slot * (num_free + 1), pose, pose),
                (camera_pose_blocks, (camera >= 0) & (slot >= 0), camera * num_free + slot, intrinsic, pose),
                (camera_blocks, camera >= 0, camera * (num_cameras + 1), intrinsic, intrinsic)):
            target.index_add_(0, block[chosen], side_side[chosen][:, rows, cols])
        diag_u = torch.cat([torch.diagonal(pose_blocks[::num_free + 1], dim1=1, dim2=2).reshape(-1),
                            torch.diagonal(camera_blocks[::num_cameras + 1], dim1=1, dim2=2).reshape(-1)
                            ]).clamp(1e-6, 1e32)  # (R,) the diagonal of U
        _accumulate(pose_blocks, problem.pose_pairs, e, side_point, pose, pose)
        _accumulate(camera_pose_blocks, problem.camera_pose_pairs, e, side_point, intrinsic, pose)
        _accumulate(camera_blocks, problem.camera_pairs, e, side_point, intrinsic, intrinsic)
        reduced = torch.zeros(size, size, dtype=torch.float64)
        poses = 6 * num_free
        reduced[:poses, :poses] = _block_matrix(pose_blocks, num_free, num_free)
        reduced[poses:, :poses] = _block_matrix(camera_pose_blocks, num_cameras, num_free)
        reduced[poses:, poses:] = _block_matrix(camera_blocks, num_cameras, num_cameras)
        reduced += torch.diag(damping * diag_u)
        chol_s, info_s = torch.linalg.cholesky_ex(reduced)  # reads the lower triangle only (the upper is partial)
        if int(info_s):
            return None
        step = torch.cholesky_solve(rhs.reshape(-1, 1), chol_s)[:, 0]
        side_step = torch.where(has, step[unknowns.clamp(min=0)], torch.zeros_like(grad_side))  # (N, S)
    else:
        diag_u = step = torch.zeros(0, dtype=torch.float64)
        side_step = torch.zeros_like(grad_side)
    # back-substitution: dX = V^-1 (-g_p - sum B^T dc)
    back = g_p.index_add(0, problem.point_index, (side_point.transpose(1, 2) @ side_step[..., None])[..., 0])
    point_step = -(v_inv @ back[..., None])[..., 0]
    point_step[held] = 0
    # predicted decrease of the IRLS quadratic model: 0.5 * (-g.dx + lambda * dx^T D dx)
    predicted = 0.5 * (-(g_c * step).sum() - (g_p * point_step).sum()
                       + damping * ((diag_u * step ** 2).sum() + (diag_v * point_step ** 2).sum()))
    return step, point_step, float(predicted)


def _apply_step(problem: _Problem, rotations, translations, points, intrinsics, step, point_step):
    """New (rotations, translations, points, intrinsics) after R <- exp(w) R, t <- exp(w) t + dt,
    X <- X + dX, dtheta <- dtheta + step."""
    free = problem.free_slot >= 0
    pose_step = step[:6 * problem.num_free].reshape(-1, 6)
    rotations, translations = rotations.clone(), translations.clone()
    delta = so3_exp(pose_step[:, :3])  # (F, 3, 3)
    rotations[free] = delta @ rotations[free]
    translations[free] = (delta @ translations[free][..., None])[..., 0] + pose_step[:, 3:]
    return rotations, translations, points + point_step, intrinsics + step[6 * problem.num_free:].view_as(intrinsics)


def solve_weighted_bundle(
    rotations: torch.Tensor,  # (I, 3, 3) float64 cam_from_world rotations
    translations: torch.Tensor,  # (I, 3) float64
    points: torch.Tensor,  # (P, 3) float64 world points
    image_index: torch.Tensor,  # (N,) int64 observation -> image
    point_index: torch.Tensor,  # (N,) int64 observation -> point
    targets: torch.Tensor,  # (N, 2) float64 normalised image-plane targets
    information: torch.Tensor,  # (N, 2, 2) float64 symmetric positive semi-definite
    constant_poses: torch.Tensor,  # (I,) bool: poses that must not move
    config: BundleSolverConfig = BundleSolverConfig(),
    intrinsics: TargetIntrinsics | None = None,  # free intrinsics: how the targets move with them
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BundleSolverReport]:
    """Robust information-weighted bundle adjustment; returns new rotations, translations, points, report
    (with the intrinsics' steps when `intrinsics` is given).

    Gauge: the constant poses, or the first pose when none is constant. Points seen from fewer than
    two distinct images stay fixed and their observations are ignored; observations behind their
    camera (z <= 1e-6), at the start or after a step, are masked (they never make a step look better).
    Cost reported = 0.5 * sum rho(r^T W r) over the active observations (Ceres convention)."""
    _check_inputs(rotations, translations, points, image_index, point_index, targets, information, constant_poses,
                  intrinsics)
    problem = _build_problem(len(rotations), len(points), image_index, point_index, targets, information,
                             constant_poses, intrinsics)
    scale = config.loss_scale
    state = (rotations, translations, points,
             torch.zeros((problem.num_cameras, problem.target_jacobians.shape[2]), dtype=torch.float64))
    usable = problem.variable_point[point_index]  # (N,) shrinks monotonically: masked observations stay masked
    cam_points, residuals, squared, active = _residuals(problem, usable, *state)
    usable = active
    losses = torch.where(active, _cauchy(squared, scale)[0], torch.zeros_like(squared))
    cost = 0.5 * float(losses.sum())
    initial_cost, damping, growth = cost, config.initial_damping, 2.0
    converged, iterations = cost == 0.0, 0
    while not converged and iterations < config.max_iterations and damping < 1e16:
        iterations += 1
        blocks = _normal_equations(problem, state[0], cam_points, residuals, squared, active, scale)
        step = _solve_step(problem, blocks, damping)
        if step is None:  # not positive definite: more damping
            damping, growth = damping * growth, growth * 2
            continue
        reduced_step, point_step, predicted = step
        candidate = _apply_step(problem, *state, reduced_step, point_step)
        new_cam_points, new_residuals, new_squared, new_active = _residuals(problem, usable, *candidate)
        new_losses = torch.where(new_active, _cauchy(new_squared, scale)[0], losses)  # deactivated: keep old cost
        new_cost = 0.5 * float(new_losses.sum())
        logger.debug("bundle LM %d: cost %.6g -> %.6g (predicted decrease %.3g), damping %.3g", iterations, cost,
                     new_cost, predicted, damping)
        if new_cost < cost and predicted > 0:
            ratio = (cost - new_cost) / predicted
            damping, growth = max(damping * max(1 / 3, 1 - (2 * ratio - 1) ** 3), MIN_DAMPING), 2.0
            converged = (cost - new_cost) <= config.function_tolerance * cost
            state = candidate
            cam_points, residuals, squared, active = new_cam_points, new_residuals, new_squared, new_active
            usable = active
            losses = torch.where(active, _cauchy(squared, scale)[0], torch.zeros_like(squared))
            cost = 0.5 * float(losses.sum())
        else:
            damping, growth = damping * growth, growth * 2
    converged = converged or damping >= 1e16  # no step of any size decreases the cost: a numerical minimum
    rotations, translations, points, intrinsics_step = state
    if iterations == 0:
        rotations, translations, points = rotations.clone(), translations.clone(), points.clone()
    return rotations, translations, points, BundleSolverReport(
        initial_cost, cost, iterations, converged, intrinsics_step if intrinsics is not None else None)
