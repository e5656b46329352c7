"""Direct photometric alignment of image patches (Lucas-Kanade), batched over keypoints.

A keypoint's template is a square patch of the (smoothed, grey or colour) reference image around
its reference keypoint, normalised to zero mean (per channel) and unit variance so that brightness
and contrast changes do not matter. The patch is warped into the target image by a per-keypoint affine map
M (2, 3), target = M [u; 1] for the offset u (pixels) from the reference keypoint, so the aligned
keypoint is M's translation. Gauss-Newton/Levenberg-Marquardt on the normalised residuals with a
Cauchy loss: a few translation-only steps with the initial linear part (from neighbouring
matches), then all six parameters. Each keypoint's translation stays within +-bound of its start;
a keypoint whose final normalised correlation is below `min_ncc` keeps its start.

Coordinates are pixels of the working (possibly resized) image, integer = pixel centre.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..configs import PatchConfig
from .optimize import single_thread


def prepare_image(image_rgb: np.ndarray, blur: float, device: torch.device | str = "cpu",
                  colour: bool = False) -> torch.Tensor:
    """(3C, H, W) float32: the smoothed image's C channels (1 grey or 3 RGB), then their x and then
    their y central differences."""
    image = image_rgb if colour else cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    image = image.astype(np.float32) / 255.0
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur).reshape(image.shape)
    kernel = np.array([[-0.5, 0.0, 0.5]], np.float32)
    gx = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE).reshape(image.shape)
    gy = cv2.filter2D(image, -1, kernel.T, borderType=cv2.BORDER_REPLICATE).reshape(image.shape)
    return torch.from_numpy(np.concatenate([image, gx, gy], -1)).permute(2, 0, 1).contiguous().to(device)


def grid(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K, 2) offsets u of a size x size patch centred on 0, x fastest."""
    half = (size - 1) / 2
    steps = torch.arange(size, dtype=torch.float32, device=device) - half
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def sample(stack: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (N, K, C) of a (C, H, W) stack at pixels (N, K, 2), border replicated."""
    _, height, width = stack.shape
    size = points.new_tensor([max(width - 1, 1), max(height - 1, 1)])
    normalised = 2 * points / size - 1
    values = F.grid_sample(stack[None], normalised[None], mode="bilinear", padding_mode="border",
                           align_corners=True)  # (1, C, N, K)
    return values[0].permute(1, 2, 0)


def normalise(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N, K, C) with zero mean per channel and unit variance overall, flattened (N, K C),
    and their standard deviations (N, 1)."""
    centred = values - values.mean(1, keepdim=True)
    sigma = centred.pow(2).mean((1, 2)).sqrt().clamp(min=1e-4)[:, None]
    return centred.flatten(1) / sigma, sigma


def templates(stack: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised templates (N, K C) of a prepared reference image around centres (N, 2)."""
    offsets = grid(size, centres.device)
    values = sample(stack[:stack.shape[0] // 3], centres[:, None] + offsets[None])
    return normalise(values)[0]


def align(stack: torch.Tensor, template: torch.Tensor, start: torch.Tensor, linear: torch.Tensor,
          config: PatchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned keypoints (N, 2) in a prepared target image and their correlations (N,).

    template (N, K C) from `templates` (same channels); start (N, 2) target pixels; linear (N, 2, 2) the initial
    linear part of the reference -> target warp. Keypoints that fail keep their start."""
    result = align_detailed(stack, template, start, linear, config, information=False)
    return torch.where(result.ok[:, None], result.points, start), result.ncc


@dataclass
class Alignment:
    points: torch.Tensor  # (N, 2) aligned target pixels (also where the alignment failed)
    ncc: torch.Tensor  # (N,) final normalised correlation
    ok: torch.Tensor  # (N,) bool: correlation >= min_ncc and a plausible warp
    information: torch.Tensor | None  # (N, 2, 2) J^T J of the residuals w.r.t. the translation, at the end


def align_detailed(stack: torch.Tensor, template: torch.Tensor, start: torch.Tensor, linear: torch.Tensor,
                   config: PatchConfig, information: bool = True) -> Alignment:
    """`align` with every outcome kept: where each alignment ended, whether it passed, and (for
    bundle adjustment) how sharply its cost constrains the keypoint's position."""
    parts: list[Alignment] = []
    with single_thread(start.device):
        for begin in range(0, len(start), config.chunk):
            end = begin + config.chunk
            parts.append(align_chunk(stack, template[begin:end].float(), start[begin:end].float(),
                                     linear[begin:end].float(), config, information))
    if not parts:
        empty = start.new_zeros(0)
        return Alignment(start.new_zeros((0, 2)), empty, empty.bool(),
                         start.new_zeros((0, 2, 2)) if information else None)
    return Alignment(torch.cat([p.points for p in parts]), torch.cat([p.ncc for p in parts]),
                     torch.cat([p.ok for p in parts]),
                     torch.cat([p.information for p in parts]) if information else None)


def jacobian_columns(gradients: torch.Tensor, offsets: torch.Tensor, affine: bool) -> torch.Tensor:
    """dI/dp (N, K, C, P) from image gradients (N, K, C, 2) (x, y), for p = M's entries row-major
    (affine, P = 6) or its translation (P = 2)."""
    if not affine:
        return gradients
    homogeneous = torch.cat([offsets, offsets.new_ones((len(offsets), 1))], -1)  # [ux uy 1] (K, 3)
    return (gradients[..., None] * homogeneous[None, :, None, None]).flatten(-2)  # one product, no 6-way stack


def residuals(stack: torch.Tensor, warp: torch.Tensor, offsets: torch.Tensor, template: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised residuals (N, K C), the target samples (N, K, 3C) and their deviations (N, 1)."""
    points = offsets[None, :, 0, None] * warp[:, None, :, 0] + offsets[None, :, 1, None] * warp[:, None, :, 1] \
        + warp[:, None, :, 2]  # (N, K, 2): M [u; 1], elementwise (a bmm with inner size 2 is slow)
    samples = sample(stack, points)
    values, sigma = normalise(samples[..., :stack.shape[0] // 3])
    return values - template, samples, sigma


def cauchy_cost(residual: torch.Tensor, scale: float) -> torch.Tensor:
    a2 = scale * scale
    return (a2 * torch.log1p(residual * residual / a2)).mean(-1)


def normal_equations(residual: torch.Tensor, samples: torch.Tensor, sigma: torch.Tensor, template: torch.Tensor,
                     offsets: torch.Tensor, affine: bool, loss_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IRLS Gauss-Newton system (n, P, P), (n, P) at the warps where `residuals` gave residual,
    samples and sigma (the robust cost is `cauchy_cost` of the residual). The Jacobian of the
    normalised samples z (zero mean, unit variance) is J = (C - z p^T) / sigma, with C the centred
    raw columns and p = mean(z C); it is never formed: J^T W J and J^T W r expand into products of
    C, z and r (one pass over C)."""
    normalised = residual + template  # z (n, K C)
    channels = samples.shape[-1] // 3
    gradients = samples[..., channels:].unflatten(-1, (2, channels)).transpose(-1, -2)  # (n, K, C, 2), a view
    raw = jacobian_columns(gradients, offsets, affine)
    centred = (raw - raw.mean(1, keepdim=True)).flatten(1, 2)  # C (n, K C, P)
    weight = 1.0 / (1.0 + residual * residual / loss_scale ** 2)  # Cauchy IRLS weights (n, K C)
    weighted = centred * weight[..., None]
    # einsum, not bmm of transposed views: 2-3x faster for these many thin products on CPU
    projection = torch.einsum("nk,nkp->np", normalised, centred) / normalised.shape[1]  # p (n, P)
    cross = torch.einsum("nkp,nkq->npq", weighted, torch.stack([normalised, residual], -1))  # C^T W [z r] (n, P, 2)
    weighted_z = weight * normalised
    zz = (weighted_z * normalised).sum(1)[:, None, None]  # z^T W z (n, 1, 1)
    zr = (weighted_z * residual).sum(1)[:, None]  # z^T W r (n, 1)
    q = cross[..., 0:1] @ projection[:, None]  # (C^T W z) p^T (n, P, P)
    hessian = torch.einsum("nkp,nkq->npq", weighted, centred) - q - q.transpose(1, 2) \
        + zz * (projection[:, :, None] @ projection[:, None])
    hessian = hessian / (sigma * sigma)[..., None]
    gradient = (cross[..., 1] - projection * zr) / sigma
    return hessian, gradient


def align_chunk(stack: torch.Tensor, template: torch.Tensor, start: torch.Tensor, linear: torch.Tensor,
                config: PatchConfig, information: bool) -> Alignment:
    offsets = grid(config.size, start.device)
    lower = torch.clamp(start - config.bound, min=0.0)  # refined keypoints stay inside the image
    upper = torch.minimum(start + config.bound, start.new_tensor([stack.shape[2] - 1, stack.shape[1] - 1]))
    warp = torch.cat([linear, start[:, :, None]], -1)  # (N, 2, 3)
    # residuals, samples, deviations and costs at the current warps: a step's trial samples become the
    # next linearisation's when the step is taken (one image lookup per step, not two)
    state = list(residuals(stack, warp, offsets, template))
    state.append(cauchy_cost(state[0], config.loss_scale))
    stages = [(False, config.translation_steps), (True, config.affine_steps)]
    everything = torch.arange(len(start), device=start.device)
    for affine, steps in stages:
        damping = torch.full((len(start),), 1e-3, device=start.device)
        active = torch.ones(len(start), dtype=torch.bool, device=start.device)
        for _ in range(steps):
            index = torch.nonzero(active)[:, 0]
            if len(index) == 0:
                break
            every = len(index) == len(start)  # no gathers while every keypoint is still active
            pick = (lambda part: part) if every else (lambda part: part[index])  # noqa: E731
            if every:
                index = everything
            current = pick(warp)
            *linearised, cost = (pick(part) for part in state)
            hessian, gradient = normal_equations(*linearised, pick(template), offsets, affine, config.loss_scale)
            diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
            system = hessian + torch.diag_embed(pick(damping)[:, None] * diagonal + 1e-9)
            delta, info = torch.linalg.solve_ex(system, -gradient[..., None])
            delta = torch.where((info == 0)[:, None, None] & torch.isfinite(delta), delta, torch.zeros_like(delta))
            candidate = current.clone()
            if affine:
                candidate += delta.reshape(-1, 2, 3)
            else:
                candidate[:, :, 2] += delta[..., 0]
            candidate[:, :, 2] = torch.maximum(torch.minimum(candidate[:, :, 2], pick(upper)), pick(lower))
            trial = residuals(stack, candidate, offsets, pick(template))
            trial_cost = cauchy_cost(trial[0], config.loss_scale)
            better = trial_cost < cost
            moved = (candidate[:, :, 2] - current[:, :, 2]).abs().amax(-1)
            warp[index] = torch.where(better[:, None, None], candidate, current)
            taken = index[better]
            for part, new in zip(state, (*trial, trial_cost)):
                part[taken] = new[better]
            damping[index] = torch.where(better, pick(damping) * 0.3, pick(damping) * 10).clamp(1e-6, 1e6)
            # converged: a proposed step below the tolerance, taken or not (a refused tiny step only
            # raises the damping, so later ones would be tinier still), or no step decreases the cost
            active[index] = ~((moved < config.tolerance) | (damping[index] >= 1e6))
    residual = state[0]
    ncc = 1 - residual.pow(2).mean(-1) / 2  # both sides have zero mean and unit variance
    ok = torch.isfinite(ncc) & (ncc >= config.min_ncc) & plausible(warp[:, :, :2], linear, config.max_distortion)
    hessian = normal_equations(*state[:3], template, offsets, False, config.loss_scale)[0] if information else None
    return Alignment(warp[:, :, 2], ncc, ok, hessian)


def translation_information(stack: torch.Tensor, template: torch.Tensor, centres: torch.Tensor,
                            linear: torch.Tensor, config: PatchConfig) -> torch.Tensor:
    """(N, 2, 2) J^T J of the residuals w.r.t. the translation at warps [linear | centres], without
    aligning (a reference observation against its own template)."""
    offsets = grid(config.size, centres.device)
    parts = []
    with single_thread(centres.device):
        for begin in range(0, len(centres), config.chunk):
            end = begin + config.chunk
            warp = torch.cat([linear[begin:end].float(), centres[begin:end, :, None].float()], -1)
            state = residuals(stack, warp, offsets, template[begin:end].float())
            parts.append(normal_equations(*state, template[begin:end].float(), offsets, False, config.loss_scale)[0])
    return torch.cat(parts) if parts else centres.new_zeros((0, 2, 2))


def plausible(linear: torch.Tensor, initial: torch.Tensor, limit: float) -> torch.Tensor:
    """Whether each refined linear part (N, 2, 2) stays within a factor `limit` of the initial one."""
    relative = linear @ torch.linalg.pinv(initial)
    values = torch.linalg.svdvals(relative)
    return torch.isfinite(values).all(-1) & (values[:, 0] <= limit) & (values[:, 1] >= 1 / limit)
