"""Photometric keypoint adjustment: affine-aware direct alignment of image patches.

Every free (non-root) keypoint of a track is aligned to its track root's patch, which stays fixed,
so all observations of a track end at the point the root sees. The warp root image -> keypoint
image starts from the keypoint with the local affine shape fitted to the correspondences that
the two images share through other tracks (robustly; the identity when there are too few), and
Lucas-Kanade refines it (d2_sfm.refinement.patches). No network pass is needed.

Images are aligned in working pixels (resized like extraction); keypoints are in original pixels,
integer = pixel centre, and `scales` (I, 2) are working / original sizes per axis.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .keypoints import KeypointAdjustment
from .geometry import epipolar_inliers
from .local_affine import AffineConfig, local_linear_maps
from .optimize import map_single_threaded
from ..images import resize, resized_size
from .patches import PatchConfig, align, prepare_image, templates
from .tracks import Tracks, node_image

ImageLoader = Callable[[int], torch.Tensor]  # image index -> patches.prepare_image(...) of its working image


def working_image(image_rgb: np.ndarray, max_edge: int | None, max_sum_edges: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (H, W, 3) resized like extraction, and its working / original size (2,) (x, y)."""
    height, width = image_rgb.shape[:2]
    small = resize(image_rgb, resized_size(width, height, max_edge, max_sum_edges))
    return small, np.array([small.shape[1] / width, small.shape[0] / height], np.float32)


def to_working(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Original pixels (N, 2) -> working pixels, integer = pixel centre in both."""
    return (points + 0.5) * scale - 0.5


def to_original(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Working pixels (N, 2) -> original pixels, integer = pixel centre in both."""
    return (points + 0.5) / scale - 0.5


def track_members(track_ids: np.ndarray, image_of: np.ndarray, working: np.ndarray
                  ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image -> (its track ids sorted, the working positions of its nodes in that order), for nodes
    with track ids (N,), images (N,) and working positions (N, 2)."""
    members = {}
    order = np.lexsort((track_ids, image_of))
    images, starts = np.unique(image_of[order], return_index=True)
    for image, begin, end in zip(images.tolist(), starts, list(starts[1:]) + [len(order)]):
        chosen = order[begin:end]
        members[image] = (track_ids[chosen], working[chosen])
    return members


def split_by(keys: np.ndarray) -> list[np.ndarray]:
    """Indices of `keys` grouped by value, groups in increasing key order, indices ascending."""
    if len(keys) == 0:
        return []
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    return np.split(order, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1)


def linear_parts(members: dict, root_images: np.ndarray, node_images: np.ndarray, root_points: np.ndarray,
                 config: AffineConfig, device: torch.device) -> np.ndarray:
    """(F, 2, 2) local linear maps root image -> node image at each free node's root."""
    linear = np.tile(np.eye(2, dtype=np.float32), (len(root_images), 1, 1))
    groups = root_images.astype(np.int64) * (int(node_images.max(initial=0)) + 1) + node_images
    for chosen in split_by(groups):
        reference, target = int(root_images[chosen[0]]), int(node_images[chosen[0]])
        tracks_r, points_r = members[reference]
        tracks_i, points_i = members[target]
        # not assume_unique: a COLMAP track (bundle adjustment) may see one image twice
        _, in_r, in_i = np.intersect1d(tracks_r, tracks_i, return_indices=True)
        found, _ = local_linear_maps(torch.from_numpy(points_r[in_r]).to(device),
                                     torch.from_numpy(points_i[in_i]).to(device),
                                     torch.from_numpy(root_points[chosen]).to(device), config)
        linear[chosen] = found.cpu().numpy()
    return linear


def adjust_keypoints_photometric(keypoints: list[np.ndarray], tracks: Tracks, offsets: np.ndarray,
                                 scales: np.ndarray, load_image: ImageLoader, patch: PatchConfig = PatchConfig(),
                                 affine: AffineConfig = AffineConfig(), device: torch.device | str = "cpu",
                                 cache_bytes: int = 2 << 30, progress: Callable = lambda it, **_: it,
                                 timings: dict[str, float] | None = None) -> KeypointAdjustment:
    """Keypoint adjustment of all tracks (see the module docstring).

    keypoints: per image (N_i, 2) original pixels; offsets (I + 1,) their cumulative counts (global
    node ids); scales (I, 2) working / original size. Pass 1 cuts each track's template (fp16) at
    its root, image by image; pass 2 aligns the free nodes image by image; prepared images are kept
    between the passes within `cache_bytes`, otherwise loaded again. timings: gets the seconds of
    the linear parts, the templates (with the image loads) and the alignment."""
    device = torch.device(device)
    refined = [np.array(k, np.float32, copy=True) for k in keypoints]
    if tracks.num_tracks == 0:
        return KeypointAdjustment(refined, np.zeros(0, np.float32), 0, 0)
    scales = np.asarray(scales, np.float32)
    image_of = node_image(tracks.nodes, offsets)
    original = np.concatenate(keypoints).astype(np.float32)[tracks.nodes]
    working = to_working(original, scales[image_of]).astype(np.float32)
    root_index = np.searchsorted(tracks.nodes, tracks.root)  # track -> its root's row (nodes are sorted)
    free = np.flatnonzero(~np.isin(tracks.nodes, tracks.root))  # rows of the free nodes
    roots = root_index[tracks.track[free]]
    root_images, node_images = image_of[roots], image_of[free]
    tick = time.time()
    linear = linear_parts(track_members(tracks.track, image_of, working), root_images, node_images, working[roots],
                          affine, device)
    timings = {} if timings is None else timings
    timings["linear"], tick = time.time() - tick, time.time()

    cache: dict[int, torch.Tensor] = {}
    cached_bytes, loads = 0, 0
    channels = 3 if patch.colour else 1
    template = torch.zeros((tracks.num_tracks, patch.size * patch.size * channels), dtype=torch.float16,
                           device=device)  # one per track: its root's patch
    track_root_images = image_of[root_index]
    aligned_later = set(node_images.tolist())
    for chosen in progress(split_by(track_root_images), desc="refine: templates", unit="img"):
        image = int(track_root_images[chosen[0]])
        stack = load_image(image)
        loads += 1
        centres = torch.from_numpy(working[root_index[chosen]]).to(device)
        template[torch.from_numpy(chosen).to(device)] = templates(stack, centres, patch.size).half()
        size = stack.numel() * stack.element_size()
        if image in aligned_later and cached_bytes + size <= cache_bytes:
            cache[image] = stack
            cached_bytes += size

    timings["templates"], tick = time.time() - tick, time.time()

    def align_image(chosen: np.ndarray) -> tuple[np.ndarray, bool]:
        """The aligned original pixels of the free nodes `chosen` (all in one image); whether it was loaded."""
        image = int(node_images[chosen[0]])
        stack = cache.pop(image, None)
        loaded = stack is None
        if loaded:
            stack = load_image(image)
        track = torch.from_numpy(tracks.track[free[chosen]]).to(device)
        aligned, _ = align(stack, template[track], torch.from_numpy(working[free[chosen]]).to(device),
                           torch.from_numpy(linear[chosen]).to(device), patch)
        return to_original(aligned.cpu().numpy(), scales[image]).astype(np.float32), loaded

    moved = np.zeros(len(free), np.float32)
    groups = split_by(node_images)
    results = map_single_threaded(align_image, groups, device, progress, desc="refine: align", unit="img")
    for chosen, (new, loaded) in zip(groups, results):
        image = int(node_images[chosen[0]])
        local = tracks.nodes[free[chosen]] - offsets[image]
        moved[chosen] = np.linalg.norm(new - refined[image][local], axis=1)
        refined[image][local] = new
        loads += loaded
    timings["align"] = time.time() - tick
    return KeypointAdjustment(refined, moved, tracks.num_tracks, loads)


def refine_pair_keypoints(reference: torch.Tensor, target: torch.Tensor, reference_points: np.ndarray,
                          target_points: np.ndarray, patch: PatchConfig = PatchConfig(),
                          affine: AffineConfig = AffineConfig(), epipolar_threshold: float | None = 3.0
                          ) -> np.ndarray:
    """Target keypoints (N, 2) aligned to their matched reference keypoints (N, 2), both in the
    working pixels of the prepared images (patches.prepare_image); the reference keypoints stay fixed.
    The matches consistent with the pair's fundamental matrix (within `epipolar_threshold` pixels;
    None: all) give the local affine shapes. Every match is aligned, each on its own.

    This is query keypoint refinement against one database image: pass the database image as
    the reference and the query as the target, once per database image."""
    if len(target_points) == 0:
        return np.zeros((0, 2), np.float32)
    device = reference.device
    reference_points = np.asarray(reference_points, np.float32)
    target_points = np.asarray(target_points, np.float32)
    consistent = (epipolar_inliers(reference_points, target_points, epipolar_threshold) if epipolar_threshold
                  else np.ones(len(target_points), bool))
    source = torch.from_numpy(reference_points).to(device)
    start = torch.from_numpy(target_points).to(device)
    keep = torch.from_numpy(consistent).to(device)
    linear, _ = local_linear_maps(source[keep], start[keep], source, affine)
    aligned, _ = align(target, templates(reference, source, patch.size), start, linear, patch)
    return aligned.cpu().numpy().astype(np.float32)


def align_matched_keypoints(reference_image: np.ndarray, target_image: np.ndarray, reference_points: np.ndarray,
                            target_points: np.ndarray, patch: PatchConfig = PatchConfig(),
                            affine: AffineConfig = AffineConfig(), epipolar_threshold: float | None = 3.0,
                            max_edge: int | None = 1600, max_sum_edges: int | None = 2800,
                            device: torch.device | str = "cpu") -> np.ndarray:
    """`refine_pair_keypoints` in original pixels: target keypoints (N, 2) aligned to their matched
    reference keypoints (N, 2) of two RGB uint8 images (as d2_sfm.images.read_image returns them),
    both resized like extraction (max_edge, max_sum_edges) for the alignment.

    For localization: the database image is the reference and the query the target, once per
    database image; a query keypoint matched in several database images gets one refined copy per
    correspondence (pixsfm's query keypoint adjustment)."""
    stacks, scales = [], []
    for image in (reference_image, target_image):
        small, scale = working_image(image, max_edge, max_sum_edges)
        stacks.append(prepare_image(small, patch.blur, device, patch.colour))
        scales.append(scale)
    reference_working = to_working(np.asarray(reference_points, np.float32), scales[0])
    target_working = to_working(np.asarray(target_points, np.float32), scales[1])
    working = refine_pair_keypoints(stacks[0], stacks[1], reference_working, target_working, patch, affine,
                                    epipolar_threshold)
    return to_original(working, scales[1]).astype(np.float32)
