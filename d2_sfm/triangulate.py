"""Pipeline step: triangulate D2 matches into a model whose camera poses are known and kept fixed.

python -m d2_sfm.triangulate --reference MODEL_DIR --images DIR --pairs PAIRS.txt
                             --features FEATURES.h5 --matches MATCHES.h5 --output OUT_DIR
                             [--verification poses|estimate|none] [--max-epipolar-error PX]
                             [--refine none|keypoints] [--device cpu|cuda]

As hloc's `triangulation.py` (used to build localization maps such as Aachen's from a reference
model): the reference's cameras, rigs, frames and images are written to `OUT_DIR/database.db` with
their ids, D2 keypoints (+0.5 px into COLMAP's pixel convention) and raw matches are imported,
matches are verified, then `pycolmap.triangulate_points` builds the 3D points; poses and intrinsics
stay as given. Verification modes:
- poses (default): keep matches whose epipolar distance under the known relative pose
  `cam1_from_cam0 = cam_from_world1 * cam_from_world0^-1` is below `max_epipolar_error` x the
  keypoint uncertainty (HDF5 attribute, 1 if absent) in both images;
- estimate: pycolmap's RANSAC verification (ignores the poses);
- none: every raw match counts as an inlier.
Images of the reference without features are left without 3D points (a warning says how many).
With `--refine keypoints` the matched keypoints are first refined along their tracks (as in
`reconstruct`) into `OUT_DIR/features-refined.h5`, which is what gets triangulated; the input
features file stays as it is.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .colmap import pycolmap
from .colmap_model import read_model
from .cli import add_refine_argument, refine_config_from_args, run_cli
from .colmap_import import COLMAP_PIXEL_OFFSET, VerificationConfig, import_matches, verify
from .configs import RefineConfig
from .errors import D2SfmError, check_options
from .h5io import (keypoint_uncertainty, list_h5_names, open_h5, read_image_size, read_keypoints,
                   stored_feature_id)
from .atomic import atomic_path
from .colmap_log import colmap_log_to
from .locking import output_lock
from .datasets.formats import read_pairs, unique_pairs

logger = logging.getLogger(__name__)

VERIFICATION_MODES = ("poses", "estimate", "none")


class TriangulationError(D2SfmError, ValueError):
    """Inputs that cannot be triangulated (reference model, names); the message names the file."""


@dataclass(frozen=True)
class TriangulationConfig:
    verification: str = "poses"  # poses | estimate | none (see the module docstring)
    max_epipolar_error: float = 4.0  # px, times the keypoint uncertainty (poses mode)
    min_match_score: float | None = None  # drop raw matches scoring at or below this
    min_num_inliers: int = 15  # pairs with fewer verified matches are dropped (poses/none modes)
    num_threads: int = -1
    refine: RefineConfig = RefineConfig()  # keypoints: OUT_DIR/features-refined.h5 is triangulated

    def __post_init__(self) -> None:
        if self.verification not in VERIFICATION_MODES:
            raise TriangulationError(f"verification {self.verification!r} is not one of "
                                     f"{', '.join(VERIFICATION_MODES)}")
        check_options("triangulation", max_epipolar_error=not self.max_epipolar_error > 0,
                      min_num_inliers=self.min_num_inliers < 0)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def database_from_model(database: Path, reference: pycolmap.Reconstruction) -> dict[str, int]:
    """Cameras, rigs, frames and images of `reference`, ids preserved; returns name -> image id."""
    with pycolmap.Database.open(str(database)) as db:
        for camera in reference.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in reference.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in reference.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in reference.images.values():
            db.write_image(pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id),
                           use_image_id=True)
    return {image.name: image.image_id for image in reference.images.values()}


def epipolar_inliers(reference: pycolmap.Reconstruction, image_id0: int, image_id1: int, keypoints0: np.ndarray,
                     keypoints1: np.ndarray, matches: np.ndarray, thresholds_px: tuple[float, float]) -> np.ndarray:
    """Mask of matches consistent with the known poses. Keypoints in COLMAP pixels (after +0.5)."""
    image0, image1 = reference.image(image_id0), reference.image(image_id1)
    camera0, camera1 = reference.camera(image0.camera_id), reference.camera(image1.camera_id)
    rays0 = camera0.cam_from_img(keypoints0[matches[:, 0]].astype(np.float64))
    rays1 = camera1.cam_from_img(keypoints1[matches[:, 1]].astype(np.float64))
    cam1_from_cam0 = image1.cam_from_world() * image0.cam_from_world().inverse()
    essential = pycolmap.essential_matrix_from_pose(cam1_from_cam0)
    h0, h1 = np.c_[rays0, np.ones(len(rays0))], np.c_[rays1, np.ones(len(rays1))]
    lines1, lines0 = h0 @ essential.T, h1 @ essential  # epipolar lines in image 1 and image 0
    distance1 = np.abs((h1 * lines1).sum(1)) / np.linalg.norm(lines1[:, :2], axis=1)
    distance0 = np.abs((h0 * lines0).sum(1)) / np.linalg.norm(lines0[:, :2], axis=1)
    return ((distance0 <= camera0.cam_from_img_threshold(thresholds_px[0]))
            & (distance1 <= camera1.cam_from_img_threshold(thresholds_px[1])))


def import_and_verify(database: Path, reference: pycolmap.Reconstruction, image_ids: dict[str, int],
                      pairs: list[tuple[str, str]], features: Path, matches: Path, config: TriangulationConfig) -> int:
    """Keypoints, raw matches and verified matches; returns the number of pairs kept."""
    with pycolmap.Database.open(str(database)) as db, open_h5(features, "features file") as feats:
        keypoints = {name: read_keypoints(feats, name) + COLMAP_PIXEL_OFFSET for name in image_ids}
        for name, image_id in image_ids.items():
            db.write_keypoints(image_id, keypoints[name])
        identities = {name: (len(points), stored_feature_id(feats, name)) for name, points in keypoints.items()}
        stats = import_matches(db, pairs, matches, image_ids, config.min_match_score, identities)
        if config.verification == "estimate":
            return -1
        kept = 0
        for stat in tqdm(stats, desc="verify (known poses)", unit="pair", disable=len(stats) < 50):
            id0, id1 = image_ids[stat.name0], image_ids[stat.name1]
            raw = db.read_matches(id0, id1)  # as stored: columns follow (id0, id1)
            if config.verification == "poses" and len(raw):
                thresholds = (config.max_epipolar_error * keypoint_uncertainty(feats, stat.name0),
                              config.max_epipolar_error * keypoint_uncertainty(feats, stat.name1))
                raw = raw[epipolar_inliers(reference, id0, id1, keypoints[stat.name0], keypoints[stat.name1],
                                           raw, thresholds)]
            if len(raw) < config.min_num_inliers:
                continue
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geometry.inlier_matches = np.ascontiguousarray(raw, np.uint32)
            db.write_two_view_geometry(id0, id1, geometry)
            kept += 1
    return kept


def build_and_triangulate(model: pycolmap.Reconstruction, image_dir: Path, names: set[str],
                          pair_list: list[tuple[str, str]], features: Path, matches: Path, output_dir: Path,
                          config: TriangulationConfig, mapper_options: pycolmap.IncrementalPipelineOptions | None
                          ) -> pycolmap.Reconstruction:
    """The database (replaced atomically) and the triangulated model, in `output_dir`."""
    database = output_dir / "database.db"
    with atomic_path(database) as partial:
        image_ids = {n: i for n, i in database_from_model(partial, model).items() if n in names}
        kept = import_and_verify(partial, model, image_ids, pair_list, features, matches, config)
        if config.verification == "estimate":
            verify(partial, VerificationConfig(), config.num_threads)
    logger.info("Imported %d pairs%s", len(pair_list), f", {kept} kept after verification" if kept >= 0 else "")
    options = mapper_options or pycolmap.IncrementalPipelineOptions()
    options.num_threads = config.num_threads
    triangulated = pycolmap.triangulate_points(model, str(database), str(image_dir), str(output_dir),
                                               clear_points=True, options=options, refine_intrinsics=False)
    return triangulated


def main(reference: pycolmap.Reconstruction | Path, image_dir: Path, pairs: Path, features: Path, matches: Path,
         output_dir: Path, config: TriangulationConfig = TriangulationConfig(),
         mapper_options: pycolmap.IncrementalPipelineOptions | None = None, device: str = "cpu"
         ) -> pycolmap.Reconstruction:
    """Triangulate the matches of `pairs` with the fixed poses of `reference`; the model (with the
    reference's cameras and poses, D2 keypoints as points2D) is written to `output_dir`. `device`:
    where keypoint refinement runs (config.refine)."""
    start = time.time()
    if not Path(image_dir).is_dir():
        raise TriangulationError(f"image folder {image_dir} does not exist or is not a folder")
    if not isinstance(reference, pycolmap.Reconstruction) and Path(reference).resolve() == Path(output_dir).resolve():
        raise TriangulationError(f"the output {output_dir} is the reference model's folder: it would be overwritten")
    reference = read_model(reference, TriangulationError)
    output_dir = Path(output_dir)
    with_features = set(list_h5_names(features))
    model = pycolmap.Reconstruction(reference)
    missing = [im.image_id for im in model.images.values() if im.name not in with_features]
    if missing:
        logger.warning("%d of %d reference images have no features in %s; they get no 3D points",
                       len(missing), model.num_images(), features)
    names = {im.name for im in model.images.values()} & with_features
    check_image_sizes(model, features, names)
    listed = unique_pairs(read_pairs(pairs))
    pair_list = [(a, b) for a, b in listed if a in names and b in names]
    if len(pair_list) < len(listed):
        logger.warning("%d of %d pairs of %s name an image that is not in the reference or has no features: "
                       "left out", len(listed) - len(pair_list), len(listed), pairs)
    if not pair_list:
        raise TriangulationError(f"no pair of {pairs} names two reference images that have features")
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir):
        if config.refine.mode != "none":
            features = refined_features(image_dir, features, matches, pair_list, output_dir, config.refine, device)
        triangulated = build_and_triangulate(model, image_dir, names, pair_list, features, matches, output_dir,
                                             config, mapper_options)
        if config.refine.bundle_adjusts:
            adjust_points(triangulated, image_dir, output_dir, config.refine, device)
    logger.info("Triangulated %d points from %d images in %.1f s (model in %s)", triangulated.num_points3D(),
                triangulated.num_reg_images(), time.time() - start, output_dir)
    return triangulated


def refined_features(image_dir: Path, features: Path, matches: Path, pair_list: list[tuple[str, str]],
                     output_dir: Path, refine: RefineConfig, device: str) -> Path:
    """OUT_DIR/features-refined.h5: the keypoints of `features` refined along the tracks of the
    pairs' matches (resumable: redone only when its inputs or settings change)."""
    from .refinement.features_file import refine_features_file  # noqa: PLC0415  (torch)

    output = output_dir / "features-refined.h5"
    refine_features_file(image_dir, features, matches, pair_list, output, refine, device)
    return output


def adjust_points(model: pycolmap.Reconstruction, image_dir: Path, output_dir: Path, refine: RefineConfig,
                  device: str) -> None:
    """Featuremetric bundle adjustment of the triangulated points, the poses held fixed; the model in
    `output_dir` is rewritten."""
    from .refinement.bundle import adjust_reconstruction, image_loader  # noqa: PLC0415  (torch)

    adjust_reconstruction(model, image_loader(image_dir, refine, device), refine, device, constant_poses=True)
    model.write(str(output_dir))


def check_image_sizes(model: pycolmap.Reconstruction, features: Path, names: set[str]) -> None:
    """Features must come from images of the reference cameras' size (else their keypoints mean
    other pixels: features of another image set, or resized images)."""
    with open_h5(features, "features file") as f:
        for image in model.images.values():
            if image.name in names:
                camera = model.camera(image.camera_id)
                if read_image_size(f, image.name) != (camera.width, camera.height):
                    raise TriangulationError(f"{features}: features of {image.name} are of a "
                                             f"{read_image_size(f, image.name)} image, the reference camera is "
                                             f"{camera.width}x{camera.height}")


def build_parser() -> argparse.ArgumentParser:
    default = TriangulationConfig()
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.triangulate", description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="COLMAP model with the known poses")
    parser.add_argument("--images", type=Path, required=True, help="image folder (for point colours)")
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--matches", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="folder for database.db and the model")
    parser.add_argument("--verification", choices=VERIFICATION_MODES, default=default.verification)
    parser.add_argument("--max-epipolar-error", type=float, default=default.max_epipolar_error, help="px")
    parser.add_argument("--min-match-score", type=float, default=default.min_match_score)
    add_refine_argument(parser, "matched keypoints before triangulation")
    parser.add_argument("--device", default="cpu", help="torch device of the refinement, e.g. cpu or cuda")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = TriangulationConfig(verification=args.verification, max_epipolar_error=args.max_epipolar_error,
                                 min_match_score=args.min_match_score, refine=refine_config_from_args(args))
    with colmap_log_to(args.output / "colmap.log"):
        main(args.reference, args.images, args.pairs, args.features, args.matches, args.output, config,
             device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
