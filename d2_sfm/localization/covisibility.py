"""Pipeline step: database pairs for triangulation from a reference model (covisibility).

python -m d2_sfm.localization.covisibility --reference MODEL_DIR --output PAIRS.txt [--num-matched K]

With 3D points in the model, each image is paired with the K images that share the most points with
it (hloc `pairs_from_covisibility`). A model without points (poses only) falls back to the K
nearest camera centres among the images looking in a similar direction.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from ..cli import run_cli
from ..datasets.formats import write_pairs
from ..pair_selection import Observations, covisibility_pairs
from . import LocalizationError
from .model import load_model

logger = logging.getLogger(__name__)

MAX_VIEW_ANGLE_DEG = 60.0  # pose fallback: pair only cameras whose optical axes differ by less


def pose_neighbour_pairs(reconstruction: pycolmap.Reconstruction, num_matched: int,
                         max_view_angle_deg: float = MAX_VIEW_ANGLE_DEG, exclude: set[str] = frozenset()
                         ) -> list[tuple[str, str]]:
    """(name, name) pairs from poses only: nearest centres among similarly oriented cameras (the
    images named in `exclude` left out)."""
    ids = sorted(i for i in reconstruction.reg_image_ids() if reconstruction.image(i).name not in exclude)
    images = [reconstruction.image(i) for i in ids]
    centres = np.array([im.projection_center() for im in images]).reshape(-1, 3)
    axes = np.array([im.viewing_direction() for im in images]).reshape(-1, 3)
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    similar = axes @ axes.T > np.cos(np.deg2rad(max_view_angle_deg))
    pairs = []
    for i, image in enumerate(images):
        candidates = [j for j in np.argsort(distances[i], kind="stable") if j != i and similar[i, j]]
        pairs.extend((image.name, images[j].name) for j in candidates[:num_matched])
    return pairs


def without_images(observations: Observations, exclude: set[str]) -> Observations:
    """The observations of the images not named in `exclude`."""
    keep = ~np.isin(observations.image_index, [i for i, n in enumerate(observations.image_names) if n in exclude])
    return Observations(observations.image_names, observations.image_index[keep], observations.point_index[keep])


def main(reference: Path | pycolmap.Reconstruction, output: Path, num_matched: int = 20,
         observations: Observations | None = None, exclude: set[str] = frozenset()) -> Path:
    """Write database pairs for triangulation; the pairs file is the step's output.

    `observations` (e.g. the NVM points of Aachen v1.0) replace the reference model's own 3D
    points; with neither, pairs come from the camera poses. The images named in `exclude` (e.g.
    unreadable ones) are in no pair; the others get their `num_matched` partners among the rest.
    """
    reconstruction = load_model(reference)
    if observations is None and reconstruction.num_points3D() > 0:
        observations = Observations.from_reconstruction(reconstruction)
    if observations is not None and exclude:
        observations = without_images(observations, exclude)
    if observations is not None and len(observations) > 0:
        pairs = covisibility_pairs(observations, num_matched)
        how = "shared 3D points"
    else:
        pairs = pose_neighbour_pairs(reconstruction, num_matched, exclude=exclude)
        how = "camera poses (no 3D points in the reference)"
    if not pairs:
        raise LocalizationError(f"no database pairs found from the reference model ({how})")
    logger.info("%d database pairs from %s, %d per image at most", len(pairs), how, num_matched)
    return write_pairs(output, pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.localization.covisibility",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="COLMAP model folder")
    parser.add_argument("--output", type=Path, required=True, help="pairs file to write")
    parser.add_argument("--num-matched", type=int, default=20, help="pairs per image")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.reference, args.output, args.num_matched)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
