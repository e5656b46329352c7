"""Weighted bundle adjustment in torch: the Gauss-Newton model of featuremetric bundle adjustment.

Minimises  0.5 * sum_ij rho(r_ij^T W_ij r_ij),  r_ij = pi(R_i X_j + t_i) - t_ij,  over the free
cam_from_world poses and the 3D points, with a pure pinhole projection pi(X) = (x/z, y/z) in normalised
image coordinates, a full 2x2 information matrix W_ij per observation (anisotropic keypoint
uncertainty) and a Cauchy loss rho(s) = c^2 log(1 + s / c^2) on the squared whitened residual.

Levenberg-Marquardt (Ceres-style diagonal damping, Nielsen update), normal equations reduced to the
free poses by the Schur complement on the per-point 3x3 blocks, dense Cholesky on the reduced system.
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
PAIR_CHUNK = 1 << 20  # observation pairs per Schur-complement chunk (bounds the (chunk, 6, 6) temporaries)


class BundleInputError(D2SfmError, ValueError):
    """Bundle-adjustment inputs with bad shapes, dtypes, indices, non-finite values or indefinite information."""


@dataclass(frozen=True)
class BundleSolverConfig:
    """Levenberg-Marquardt settings of the weighted bundle adjustment."""
    max_iterations: int = 30
    loss_scale: float = 2.0  # Cauchy scale on the whitened residual norm (units of sqrt(information))
    function_tolerance: float = 1e-8  # relative cost decrease to stop
    initial_damping: float = 1e-4


@dataclass
class BundleSolverReport:
    """Costs are 0.5 * sum rho(r^T W r) over the active observations; iterations count rejected steps too."""
    initial_cost: float
    final_cost: float
    iterations: int
    converged: bool


@dataclass
class _Problem:
    """Fixed structure of a problem (built once, shared by all LM iterations)."""
    image_index: torch.Tensor  # (N,)
    point_index: torch.Tensor  # (N,)
    targets: torch.Tensor  # (N, 2)
    information: torch.Tensor  # (N, 2, 2)
    variable_point: torch.Tensor  # (P,) bool: seen from >= 2 distinct images
    free_slot: torch.Tensor  # (I,) int64: index among the free poses, -1 for constant poses
    num_free: int
    pair_first: torch.Tensor  # (Q,) observation ids: pairs of observations of the same variable point,
    pair_second: torch.Tensor  # (Q,)   both in free images, with slot(first) >= slot(second)
    pair_block: torch.Tensor  # (Q,) flat block index slot(first) * F + slot(second) (lower block triangle)


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
                  constant_poses) -> None:
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
    if bad:
        raise BundleInputError(f"weighted bundle adjustment: {'; '.join(bad)}")


def _build_problem(num_images: int, num_points: int, image_index: torch.Tensor, point_index: torch.Tensor,
                   targets: torch.Tensor, information: torch.Tensor, constant_poses: torch.Tensor) -> _Problem:
    constant = constant_poses.clone()
    if not bool(constant.any()) and num_images:
        constant[0] = True  # gauge: hold the first pose (the scale stays free, damping keeps it put)
    free = ~constant
    free_slot = torch.where(free, free.long().cumsum(0) - 1, torch.full((num_images,), -1, dtype=torch.long))
    num_free = int(free.sum())
    # points seen from >= 2 distinct images are variable; the others stay fixed and their observations are dropped
    distinct = torch.unique(point_index * num_images + image_index)
    variable_point = torch.bincount(distinct // num_images, minlength=num_points) >= 2
    # ordered pairs (a, b) of observations of the same variable point, both in free images; only those landing
    # in the lower block triangle of the reduced system (Cholesky reads only the lower triangle)
    structural = torch.nonzero(variable_point[point_index] & free[image_index]).squeeze(1)  # (M,)
    structural = structural[torch.argsort(point_index[structural], stable=True)]
    point_of = point_index[structural]  # (M,) sorted
    counts = torch.bincount(point_of, minlength=num_points)  # (P,)
    starts = counts.cumsum(0) - counts
    per = counts[point_of]  # (M,) track length (in free images) of each structural observation
    first = torch.repeat_interleave(torch.arange(len(structural)), per)  # (Q,)
    offset = torch.repeat_interleave(per.cumsum(0) - per, per)
    second = starts[point_of][first] + torch.arange(len(first)) - offset
    first, second = structural[first], structural[second]
    first_slot, second_slot = free_slot[image_index[first]], free_slot[image_index[second]]
    lower = first_slot >= second_slot
    first, second = first[lower], second[lower]
    block = first_slot[lower] * num_free + second_slot[lower]
    return _Problem(image_index, point_index, targets, information, variable_point, free_slot, num_free,
                    first, second, block)


def _residuals(problem: _Problem, usable: torch.Tensor, rotations: torch.Tensor, translations: torch.Tensor,
               points: torch.Tensor):
    """Camera-frame points (N, 3), residuals (N, 2), squared whitened norms (N,), active mask (N,).
    An observation is active when usable (N,), in front of its camera and its point has >= 2 such ones."""
    cam_points = (rotations[problem.image_index] @ points[problem.point_index][..., None])[..., 0] \
        + translations[problem.image_index]  # (N, 3)
    depth = cam_points[:, 2]
    valid = usable & (depth > MIN_DEPTH) & torch.isfinite(cam_points).all(1)
    projected = cam_points[:, :2] / torch.where(valid, depth, torch.ones_like(depth))[:, None]
    residuals = torch.where(valid[:, None], projected - problem.targets, torch.zeros_like(projected))  # (N, 2)
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
    """Per-observation Jacobian blocks and gradients, accumulated (IRLS weights, active observations)."""
    x, y, z = cam_points.unbind(1)
    inv_z = 1 / torch.where(active, z, torch.ones_like(z))
    zero = torch.zeros_like(z)
    d_proj = torch.stack([inv_z, zero, -x * inv_z ** 2, zero, inv_z, -y * inv_z ** 2], 1).reshape(-1, 2, 3)
    j_pose = torch.cat([d_proj @ skew(-cam_points), d_proj], 2)  # (N, 2, 6): d r / d(w, dt)
    j_point = d_proj @ rotations[problem.image_index]  # (N, 2, 3): d r / d X
    weight = torch.where(active, _cauchy(squared, scale)[1], torch.zeros_like(squared))  # (N,)
    weighted_info = problem.information * weight[:, None, None]  # (N, 2, 2)
    w_pose, w_point = weighted_info @ j_pose, weighted_info @ j_point  # (N, 2, 6), (N, 2, 3)
    pose_pose = j_pose.transpose(1, 2) @ w_pose  # (N, 6, 6)
    pose_point = w_pose.transpose(1, 2) @ j_point  # (N, 6, 3)
    point_point = j_point.transpose(1, 2) @ w_point  # (N, 3, 3)
    grad_pose = (w_pose.transpose(1, 2) @ residuals[..., None])[..., 0]  # (N, 6)
    grad_point = (w_point.transpose(1, 2) @ residuals[..., None])[..., 0]  # (N, 3)
    return pose_pose, pose_point, point_point, grad_pose, grad_point


def _solve_step(problem: _Problem, blocks, damping: float):
    """Damped LM step (pose steps (F, 6), point steps (P, 3), predicted decrease) or None (not PD)."""
    pose_pose, pose_point, point_point, grad_pose, grad_point = blocks
    num_free, num_points = problem.num_free, len(problem.variable_point)
    slot = problem.free_slot[problem.image_index]  # (N,)
    in_free = slot >= 0
    f_slot = slot[in_free]
    u = torch.zeros(num_free, 36, dtype=torch.float64).index_add_(0, f_slot, pose_pose[in_free].reshape(-1, 36))
    g_c = torch.zeros(num_free, 6, dtype=torch.float64).index_add_(0, f_slot, grad_pose[in_free])
    v = torch.zeros(num_points, 9, dtype=torch.float64).index_add_(0, problem.point_index,
                                                                     point_point.reshape(-1, 9)).reshape(-1, 3, 3)
    g_p = torch.zeros(num_points, 3, dtype=torch.float64).index_add_(0, problem.point_index, grad_point)
    u = u.reshape(-1, 6, 6)
    diag_u = torch.diagonal(u, dim1=1, dim2=2).clamp(1e-6, 1e32)  # (F, 6) Ceres-style LM diagonal
    diag_v = torch.diagonal(v, dim1=1, dim2=2).clamp(1e-6, 1e32)  # (P, 3)
    # points with < 2 active observations have no observations in the system: hold them (identity block)
    held = torch.diagonal(v, dim1=1, dim2=2).sum(1) <= 0
    v = v + torch.diag_embed(damping * diag_v)
    v[held] = torch.eye(3, dtype=torch.float64)
    chol_v, info_v = torch.linalg.cholesky_ex(v)
    if bool(info_v.any()):
        return None
    v_inv = torch.cholesky_inverse(chol_v)  # (P, 3, 3)
    # Schur complement on the points: S = U - sum B V^-1 B^T,  rhs = -g_c + sum B V^-1 g_p
    e = pose_point @ v_inv[problem.point_index]  # (N, 6, 3)
    rhs = -g_c
    if num_free:
        rhs = rhs.index_add(0, f_slot, (e[in_free] @ g_p[problem.point_index[in_free]][..., None])[..., 0])
        reduced = torch.zeros(num_free * num_free, 36, dtype=torch.float64)
        diagonal_blocks = torch.arange(num_free) * (num_free + 1)
        reduced.index_add_(0, diagonal_blocks, (u + torch.diag_embed(damping * diag_u)).reshape(-1, 36))
        for start in range(0, len(problem.pair_first), PAIR_CHUNK):
            a = problem.pair_first[start:start + PAIR_CHUNK]
            b = problem.pair_second[start:start + PAIR_CHUNK]
            reduced.index_add_(0, problem.pair_block[start:start + PAIR_CHUNK],
                               (e[a] @ pose_point[b].transpose(1, 2)).reshape(-1, 36), alpha=-1)
        reduced = reduced.reshape(num_free, num_free, 6, 6).permute(0, 2, 1, 3).reshape(6 * num_free, 6 * num_free)
        chol_s, info_s = torch.linalg.cholesky_ex(reduced)  # reads the lower triangle only (the upper is partial)
        if int(info_s):
            return None
        pose_step = torch.cholesky_solve(rhs.reshape(-1, 1), chol_s).reshape(num_free, 6)
    else:
        pose_step = torch.zeros(0, 6, dtype=torch.float64)
    # back-substitution: dX = V^-1 (-g_p - sum B^T dc)
    back = g_p
    if num_free:
        back = back.index_add(0, problem.point_index[in_free],
                              (pose_point[in_free].transpose(1, 2) @ pose_step[f_slot][..., None])[..., 0])
    point_step = -(v_inv @ back[..., None])[..., 0]
    point_step[held] = 0
    # predicted decrease of the IRLS quadratic model: 0.5 * (-g.dx + lambda * dx^T D dx)
    predicted = 0.5 * (-(g_c * pose_step).sum() - (g_p * point_step).sum()
                       + damping * ((diag_u * pose_step ** 2).sum() + (diag_v * point_step ** 2).sum()))
    return pose_step, point_step, float(predicted)


def _apply_step(problem: _Problem, rotations, translations, points, pose_step, point_step):
    """New (rotations, translations, points) after R <- exp(w) R, t <- exp(w) t + dt, X <- X + dX."""
    free = problem.free_slot >= 0
    rotations, translations = rotations.clone(), translations.clone()
    delta = so3_exp(pose_step[:, :3])  # (F, 3, 3)
    rotations[free] = delta @ rotations[free]
    translations[free] = (delta @ translations[free][..., None])[..., 0] + pose_step[:, 3:]
    return rotations, translations, points + point_step


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BundleSolverReport]:
    """Robust information-weighted bundle adjustment; returns new rotations, translations, points, report.

    Gauge: the constant poses, or the first pose when none is constant. Points seen from fewer than
    two distinct images stay fixed and their observations are ignored; observations behind their
    camera (z <= 1e-6), at the start or after a step, are masked (they never make a step look better).
    Cost reported = 0.5 * sum rho(r^T W r) over the active observations (Ceres convention)."""
    _check_inputs(rotations, translations, points, image_index, point_index, targets, information, constant_poses)
    problem = _build_problem(len(rotations), len(points), image_index, point_index, targets, information,
                             constant_poses)
    scale = config.loss_scale
    usable = problem.variable_point[point_index]  # (N,) shrinks monotonically: masked observations stay masked
    cam_points, residuals, squared, active = _residuals(problem, usable, rotations, translations, points)
    usable = active
    losses = torch.where(active, _cauchy(squared, scale)[0], torch.zeros_like(squared))
    cost = 0.5 * float(losses.sum())
    initial_cost, damping, growth = cost, config.initial_damping, 2.0
    converged, iterations = cost == 0.0, 0
    while not converged and iterations < config.max_iterations and damping < 1e16:
        iterations += 1
        blocks = _normal_equations(problem, rotations, cam_points, residuals, squared, active, scale)
        step = _solve_step(problem, blocks, damping)
        if step is None:  # not positive definite: more damping
            damping, growth = damping * growth, growth * 2
            continue
        pose_step, point_step, predicted = step
        candidate = _apply_step(problem, rotations, translations, points, pose_step, point_step)
        new_cam_points, new_residuals, new_squared, new_active = _residuals(problem, usable, *candidate)
        new_losses = torch.where(new_active, _cauchy(new_squared, scale)[0], losses)  # deactivated: keep old cost
        new_cost = 0.5 * float(new_losses.sum())
        logger.debug("bundle LM %d: cost %.6g -> %.6g (predicted decrease %.3g), damping %.3g", iterations, cost,
                     new_cost, predicted, damping)
        if new_cost < cost and predicted > 0:
            ratio = (cost - new_cost) / predicted
            damping, growth = max(damping * max(1 / 3, 1 - (2 * ratio - 1) ** 3), MIN_DAMPING), 2.0
            converged = (cost - new_cost) <= config.function_tolerance * cost
            rotations, translations, points = candidate
            cam_points, residuals, squared, active = new_cam_points, new_residuals, new_squared, new_active
            usable = active
            losses = torch.where(active, _cauchy(squared, scale)[0], torch.zeros_like(squared))
            cost = 0.5 * float(losses.sum())
        else:
            damping, growth = damping * growth, growth * 2
    converged = converged or damping >= 1e16  # no step of any size decreases the cost: a numerical minimum
    if iterations == 0:
        rotations, translations, points = rotations.clone(), translations.clone(), points.clone()
    return rotations, translations, points, BundleSolverReport(initial_cost, cost, iterations, converged)
