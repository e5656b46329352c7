"""Batched Levenberg-Marquardt alignment of keypoints to fixed reference descriptors.

Every free keypoint i has its own 2-vector p_i (feature-map cells inside its patch) and a fixed
reference descriptor f_i (its track root's, or a database observation's). The cost is
w_i * rho(|F_i(p_i) - f_i|^2) with the Cauchy loss rho(s) = a^2 log(1 + s / a^2) and F_i the
L2-normalised bilinear interpolation of the patch. The problems are independent, so all
keypoints take one step at a time together: IRLS Gauss-Newton with a 2x2 solve per keypoint,
per-keypoint damping (a step that raises the cost is refused and the damping raised), and a box
bound of +-`bound` cells around the start (projected steps).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

import torch

from ..configs import SolverConfig
from .dense import sample_descriptor, sample_with_gradient


def cauchy(squared: torch.Tensor, scale: float) -> torch.Tensor:
    a2 = scale * scale
    return a2 * torch.log1p(squared / a2)


@contextlib.contextmanager
def single_thread(device: torch.device) -> Iterator[None]:
    """One CPU thread for the many small tensor ops of a solve: measured 15x faster than two
    threads on a loaded 2-core machine (spinning workers), and as fast on an idle one."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


Item = TypeVar("Item")
Result = TypeVar("Result")


def map_single_threaded(function: Callable[[Item], Result], items: list[Item], device: torch.device,
                        progress: Callable = lambda it, **_: it, **progress_args) -> list[Result]:
    """[function(item) for item in items], on as many worker threads as torch has CPU threads
    (OMP_NUM_THREADS), each running its ops on one thread: the many small tensor ops of one
    image's alignment leave cores idle, one image per core does not (torch releases the GIL).
    Results do not depend on the number of workers. On an accelerator: one by one."""
    workers = min(len(items), torch.get_num_threads()) if device.type == "cpu" else 1
    with single_thread(device):
        if workers <= 1:
            return [function(item) for item in progress(items, total=len(items), **progress_args)]
        with ThreadPoolExecutor(workers) as pool:
            return list(progress(pool.map(function, items), total=len(items), **progress_args))


def align(patches: torch.Tensor, start: torch.Tensor, references: torch.Tensor, weights: torch.Tensor,
          config: SolverConfig) -> torch.Tensor:
    """Refined cells (N, 2) for patches (N, C, P, P), start cells (N, 2) in patch coordinates,
    references (N, C) unit descriptors and loss weights (N,); chunked to bound the memory."""
    out = []
    with single_thread(start.device):
        for begin in range(0, len(start), config.chunk):
            end = begin + config.chunk
            out.append(align_chunk(patches[begin:end].float(), start[begin:end].float(),
                                   references[begin:end].float(), weights[begin:end].float(), config))
    return torch.cat(out) if out else start.new_zeros((0, 2))


def align_chunk(patches: torch.Tensor, start: torch.Tensor, references: torch.Tensor, weights: torch.Tensor,
                config: SolverConfig) -> torch.Tensor:
    size = patches.shape[-1]
    lower = torch.clamp(start - config.bound, min=1.0)  # taps of the central differences stay inside
    upper = torch.clamp(start + config.bound, max=size - 2.0)
    cells = start.clone()
    damping = torch.full_like(weights, 1e-2)
    active = torch.ones_like(weights, dtype=torch.bool)
    index = torch.arange(len(cells), device=cells.device)  # the keypoints still moving
    batch = (patches, references, weights, lower, upper)
    for iteration in range(config.iterations):
        if iteration % 5 == 4:  # drop converged keypoints now and then (a gather costs about one step)
            keep = active[index]
            if not keep.any():
                break
            index = index[keep]
            batch = tuple(tensor[keep] for tensor in batch)
        moving = active[index]
        step_cells, step_damping, going = newton_step(batch[0], cells[index], batch[1], batch[2], damping[index],
                                                      batch[3], batch[4], config)
        cells[index] = torch.where(moving[:, None], step_cells, cells[index])
        damping[index] = torch.where(moving, step_damping, damping[index])
        active[index] = moving & going
        if not active.any():
            break
    return cells


def newton_step(patches: torch.Tensor, cells: torch.Tensor, references: torch.Tensor, weights: torch.Tensor,
                damping: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, config: SolverConfig
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One damped IRLS Gauss-Newton step of every keypoint: (cells, damping, still moving)."""
    a2 = config.loss_scale ** 2
    descriptor, jacobian = sample_with_gradient(patches, cells)  # (n, C), (n, C, 2)
    residual = descriptor - references
    squared = (residual * residual).sum(-1)
    cost = weights * cauchy(squared, config.loss_scale)
    irls = weights / (1 + squared / a2)  # Cauchy IRLS weight
    jt = jacobian.transpose(1, 2)
    hessian = irls[:, None, None] * (jt @ jacobian)  # (n, 2, 2)
    gradient = irls[:, None] * (jt @ residual[..., None])[..., 0]  # (n, 2)
    diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
    eye = torch.eye(2, dtype=cells.dtype, device=cells.device)
    system = hessian + (damping[:, None] * diagonal + 1e-9)[:, :, None] * eye
    step = -torch.linalg.solve(system, gradient[..., None])[..., 0]
    step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    candidate = torch.maximum(torch.minimum(cells + step, upper), lower)
    new_residual = sample_descriptor(patches, candidate) - references
    new_cost = weights * cauchy((new_residual * new_residual).sum(-1), config.loss_scale)
    better = new_cost < cost
    moved = (candidate - cells).abs().amax(-1)
    cells = torch.where(better[:, None], candidate, cells)
    damping = torch.where(better, damping * 0.3, damping * 10).clamp(1e-6, 1e6)
    keep = ~((better & (moved < config.tolerance)) | (damping >= 1e6))
    return cells, damping, keep
