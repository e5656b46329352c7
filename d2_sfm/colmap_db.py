"""Pipeline step: a COLMAP database from d2_sfm features and matches, verified by pycolmap.

python -m d2_sfm.colmap_db --images DIR --features FEATURES.h5 --pairs PAIRS.txt --matches MATCHES.h5
                           --output database.db [--camera-mode auto|single|per_image|per_folder]
                           [--camera-model MODEL] [--camera-params f,cx,cy | fx,fy,cx,cy,...]
                           [--intrinsics FILE] [--min-pair-inliers N] [--min-pair-inlier-ratio R]

What goes in (as hloc's `reconstruction.py`, plus safeguards):
- cameras: shared or not by `CameraConfig.mode`; focal length from EXIF when the image has it
  (pycolmap's `infer_camera_from_image`), else pycolmap's default prior 1.2 * max(W, H) (marked as
  no prior); known intrinsics for all images (`params`) or per image (`intrinsics_file`, lines
  `name MODEL W H p1 p2 ...` as hloc's query lists) are marked as priors;
- one rig per camera and one frame per image, as `pycolmap.import_images` writes them;
- keypoints: **+0.5** on x and y. d2_sfm's HDF5 files put the centre of the top-left pixel at
  (0, 0) (D2-Net and hloc convention), COLMAP at (0.5, 0.5);
- raw matches of every pair of the pairs file (descriptors are not stored, as in hloc);
- two-view geometries estimated by pycolmap (`geometric_verification`, RANSAC on E, F or H);
- weak-pair rejection: verified pairs with fewer than `min_pair_inliers` inliers, or an inlier
  ratio (inliers / raw matches) below `min_pair_inlier_ratio`, are removed so that the mapper never
  registers an image on them. Every pair's numbers go to `<database>.pairs.json`.

The database is built as `<database>.partial` and renamed only when complete: an interrupted run
never leaves a half-written `database.db` behind.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .colmap import pycolmap
from .cli import run_cli
from .errors import D2SfmError, check_options
from .h5io import (H5FormatError, list_h5_names, open_h5, read_image_size, read_keypoints, read_matches,
                   stored_feature_id)
from .atomic import atomic_path, write_json
from .colmap_log import colmap_log_to
from .locking import output_lock
from .datasets.formats import read_pairs, unique_pairs
from .paths import check_output_path, resolve_inside, safe_relative_name
from .textfiles import read_text_lines

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "single", "per_image", "per_folder")
COLMAP_PIXEL_OFFSET = 0.5  # d2_sfm keypoints (top-left pixel centre at 0) -> COLMAP (at 0.5)
MODEL_FOR_PARAM_COUNT = {3: "SIMPLE_PINHOLE", 4: "PINHOLE"}


class DatabaseError(D2SfmError, ValueError):
    """Inputs that cannot make a COLMAP database (cameras, features, matches); names the file."""


@dataclass(frozen=True)
class CameraConfig:
    """How images get cameras. `params` / `intrinsics_file` are known intrinsics (COLMAP order)."""
    mode: str = "auto"  # auto: share among same size + same EXIF focal; single; per_image; per_folder
    model: str = "SIMPLE_RADIAL"  # COLMAP model of cameras without known intrinsics (COLMAP's default)
    params: tuple[float, ...] | None = None  # known intrinsics of every image, e.g. (fx, fy, cx, cy)
    params_model: str | None = None  # model of `params`; None: SIMPLE_PINHOLE (3) or PINHOLE (4)
    intrinsics_file: Path | None = None  # per-image known intrinsics: `name MODEL W H p1 p2 ...`

    def __post_init__(self) -> None:
        if self.mode not in CAMERA_MODES:
            raise DatabaseError(f"camera mode {self.mode!r} is not one of {', '.join(CAMERA_MODES)}")
        check_model_name(self.model)
        if self.params is not None:  # checked now, not after minutes of extraction
            known_camera(self.params_model, 1, 1, self.params, "--camera-params")

    def as_dict(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class VerificationConfig:
    """pycolmap's two-view verification, then d2_sfm's weak-pair rejection."""
    max_error: float = 4.0  # RANSAC threshold (px)
    max_num_trials: int = 10000  # COLMAP's default (hloc: 20000, about twice as slow for D2's low ratios)
    ransac_min_inlier_ratio: float = 0.1  # as hloc (RANSAC's own early give-up)
    min_num_inliers: int = 15  # pycolmap's verified-pair minimum
    # Weak-pair rejection, measured on kermit and temple (640 px, ~900 D2 keypoints per image): pairs
    # under 50 inliers were mostly false (their inliers disagree with the final model) or, on the
    # temple, views 90-180 degrees apart; every true temple neighbour had 90+ inliers.
    min_pair_inliers: int = 50  # fewer verified inliers -> pair removed
    min_pair_inlier_ratio: float = 0.15  # weak-pair rejection: inliers / raw matches below -> removed
    min_match_score: float | None = None  # drop raw matches scoring at or below this (None: keep all)
    border_margin: float = 8.0  # drop matches of keypoints this close to the border (px): zero padding
    # makes border responses of the dense map (2 cells at stride 4) match each other across images;
    # on the temple, 8 px removed the only false pairs (100-170 degrees apart) above 50 inliers
    random_seed: int = 0  # RANSAC seed, for repeatable runs

    def __post_init__(self) -> None:
        check_options("verification", ransac_max_error=not self.max_error > 0,
                      max_num_trials=self.max_num_trials < 1, min_num_inliers=self.min_num_inliers < 0,
                      min_pair_inliers=self.min_pair_inliers < 0,
                      min_pair_inlier_ratio=not self.min_pair_inlier_ratio >= 0,
                      border_margin=self.border_margin < 0)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CameraChoice:
    camera: pycolmap.Camera
    source: str  # "exif", "default" (pycolmap's 1.2 * max(W, H) prior), "known"
    group: tuple  # images with equal groups share the camera


@dataclass
class PairStats:
    name0: str
    name1: str
    num_matches: int
    num_inliers: int = 0
    configuration: str = "UNVERIFIED"
    kept: bool = False
    reason: str = ""

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "inlier_ratio": round(self.inlier_ratio, 4)}


@dataclass
class DatabaseSummary:
    path: Path
    image_ids: dict[str, int]
    camera_sources: dict[str, str]  # image name -> exif / default / known
    pairs: list[PairStats] = field(default_factory=list)
    known_camera_ids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kept_pairs(self) -> list[PairStats]:
        return [p for p in self.pairs if p.kept]

    def log(self) -> None:
        verified = [p for p in self.pairs if p.num_inliers > 0]
        logger.info("Database %s: %d images, %d matched pairs, %d verified, %d kept after weak-pair "
                    "rejection", self.path, len(self.image_ids), len(self.pairs), len(verified),
                    len(self.kept_pairs))


# ----------------------------------------------------------------------------------------------
# Cameras


def check_model_name(model: str) -> str:
    if model not in pycolmap.CameraModelId.__members__ or model == "INVALID":
        raise DatabaseError(f"unknown camera model {model!r}; COLMAP models: "
                            f"{', '.join(m for m in pycolmap.CameraModelId.__members__ if m != 'INVALID')}")
    return model


def parse_camera_params(text: str) -> tuple[float, ...]:
    """'fx,fy,cx,cy' (commas and/or spaces) -> floats; raises DatabaseError on anything else."""
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError as error:
        raise DatabaseError(f"--camera-params {text!r}: expected numbers separated by commas") from error
    if not values:
        raise DatabaseError("--camera-params is empty")
    return values


def camera_params_argument(text: str) -> tuple[float, ...]:
    """parse_camera_params for argparse: its message, not argparse's "invalid value" wording."""
    try:
        return parse_camera_params(text)
    except DatabaseError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def known_camera(model: str | None, width: int, height: int, params: tuple[float, ...],
                 source: str) -> pycolmap.Camera:
    """A camera with known intrinsics (a focal prior), checked against the model's parameter count."""
    model = model or MODEL_FOR_PARAM_COUNT.get(len(params))
    if model is None:
        raise DatabaseError(f"{source}: {len(params)} intrinsics given; name the camera model "
                            "(--camera-model) or give f,cx,cy (SIMPLE_PINHOLE) or fx,fy,cx,cy (PINHOLE)")
    check_model_name(model)
    expected = pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1).params.size
    if len(params) != expected:
        raise DatabaseError(f"{source}: camera model {model} takes {expected} parameters "
                            f"({pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1).params_info}),"
                            f" got {len(params)}")
    if width < 1 or height < 1:
        raise DatabaseError(f"{source}: image size {width}x{height} must be positive")
    camera = pycolmap.Camera(model=model, width=width, height=height, params=list(params))
    focal = [camera.params[i] for i in camera.focal_length_idxs()]
    if not all(np.isfinite(params)) or not all(f > 0 for f in focal):
        raise DatabaseError(f"{source}: intrinsics {list(params)} must be finite with a positive focal length")
    camera.has_prior_focal_length = True
    return camera


def read_intrinsics_file(path: Path) -> dict[str, pycolmap.Camera]:
    """hloc's `queries_with_intrinsics.txt` format: `name MODEL WIDTH HEIGHT p1 p2 ...` per line."""
    cameras: dict[str, pycolmap.Camera] = {}
    for number, line in read_text_lines(path, "intrinsics file"):
        fields = line.split()
        where = f"{path}:{number}"
        if fields and safe_relative_name(fields[0], where) in cameras:
            raise DatabaseError(f"{where}: {fields[0]} is listed twice")
        if len(fields) < 5:
            raise DatabaseError(f"{where}: expected 'name MODEL WIDTH HEIGHT params...', got {line!r}")
        try:
            width, height = int(fields[2]), int(fields[3])
            params = tuple(float(v) for v in fields[4:])
        except ValueError as error:
            raise DatabaseError(f"{where}: width, height and parameters must be numbers: {line!r}") from error
        cameras[safe_relative_name(fields[0], where)] = known_camera(fields[1], width, height, params, where)
    return cameras


def exif_camera(path: Path, size: tuple[int, int], model: str) -> tuple[pycolmap.Camera, str]:
    """Camera of `model` with the EXIF focal length when present, else pycolmap's default prior."""
    width, height = size
    try:
        inferred = pycolmap.infer_camera_from_image(str(path))
    except ValueError as error:  # pycolmap cannot decode a file that OpenCV could: no EXIF then
        logger.debug("pycolmap cannot read %s (%s); using the default focal prior", path, error)
        inferred = None
    if inferred is not None and (inferred.width, inferred.height) != (width, height):
        raise DatabaseError(f"image {path} is {inferred.width}x{inferred.height} but its features were "
                            f"extracted from {width}x{height}; extract again (--overwrite)")
    has_exif = inferred is not None and bool(inferred.has_prior_focal_length)
    focal = float(inferred.mean_focal_length()) if has_exif else 1.2 * max(width, height)
    camera = pycolmap.Camera.create_from_model_name(0, model, focal, width, height)
    camera.has_prior_focal_length = has_exif
    return camera, ("exif" if has_exif else "default")


def choose_cameras(image_dir: Path, names: list[str], sizes: dict[str, tuple[int, int]],
                   config: CameraConfig) -> dict[str, CameraChoice]:
    """A camera per image and a sharing group: images with equal groups get one camera."""
    per_image_known = read_intrinsics_file(config.intrinsics_file) if config.intrinsics_file else {}
    unknown = sorted(set(per_image_known) - set(names))
    if unknown:
        logger.warning("Intrinsics file %s lists %d images without features, e.g. %s",
                       config.intrinsics_file, len(unknown), unknown[0])
    choices = {}
    for name in names:
        size = sizes[name]
        if name in per_image_known:
            camera = per_image_known[name]
            if (camera.width, camera.height) != size:
                raise DatabaseError(f"{config.intrinsics_file}: {name} is {size[0]}x{size[1]}, "
                                    f"not {camera.width}x{camera.height}")
            choices[name] = CameraChoice(camera, "known", ("known", name))
            continue
        if config.params is not None:
            camera, source = known_camera(config.params_model, *size, config.params, "--camera-params"), "known"
        else:
            camera, source = exif_camera(resolve_inside(image_dir, name), size, config.model)
        choices[name] = CameraChoice(camera, source, sharing_group(name, camera, config.mode))
    shared_sizes = {(c.camera.width, c.camera.height) for c in choices.values() if c.group == ("single",)}
    if len(shared_sizes) > 1:
        raise DatabaseError(f"--camera-mode single needs images of one size, found {sorted(shared_sizes)} "
                            "(use auto, per_folder or per_image)")
    return choices


def sharing_group(name: str, camera: pycolmap.Camera, mode: str) -> tuple:
    if mode == "single":
        return ("single",)
    if mode == "per_image":
        return ("image", name)
    if mode == "per_folder":
        return ("folder", str(PurePosixPath(name).parent), camera.width, camera.height)
    # auto: same size, model and prior focal -> same physical camera (as COLMAP's AUTO, roughly)
    return ("auto", camera.model.name, camera.width, camera.height, round(camera.mean_focal_length(), 3),
            camera.has_prior_focal_length)


# ----------------------------------------------------------------------------------------------
# Database content


def write_cameras_and_images(db: pycolmap.Database, choices: dict[str, CameraChoice]
                             ) -> tuple[dict[str, int], list[int]]:
    """Cameras (one rig each) and images (one frame each); returns image ids and known camera ids."""
    camera_of_group: dict[tuple, tuple[int, int]] = {}
    image_ids, known = {}, []
    for name, choice in choices.items():
        if choice.group not in camera_of_group:
            camera_id = db.write_camera(choice.camera)
            rig = pycolmap.Rig()
            rig.add_ref_sensor(db.read_camera(camera_id).sensor_id)
            camera_of_group[choice.group] = (camera_id, db.write_rig(rig))
            if choice.source == "known":
                known.append(camera_id)
        camera_id, rig_id = camera_of_group[choice.group]
        image_id = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
        frame = pycolmap.Frame()
        frame.rig_id = rig_id
        frame.add_data_id(db.read_image(image_id).data_id)
        db.write_frame(frame)
        image_ids[name] = image_id
    return image_ids, known


def import_keypoints(db: pycolmap.Database, features: Path, image_ids: dict[str, int]
                     ) -> dict[str, tuple[int, str]]:
    """Keypoints of every image, shifted by +0.5 px into COLMAP's pixel convention; returns each
    image's keypoint count and feature id (what its matches must have been made from)."""
    identities = {}
    with open_h5(features, "features file") as f:
        for name, image_id in image_ids.items():
            keypoints = read_keypoints(f, name)
            db.write_keypoints(image_id, keypoints + COLMAP_PIXEL_OFFSET)
            identities[name] = (len(keypoints), stored_feature_id(f, name))
    return identities


def border_keypoints(features: Path, names: list[str], margin: float) -> dict[str, np.ndarray]:
    """Per image, which keypoints lie within `margin` px of the image border (all False if margin <= 0)."""
    masks = {}
    with open_h5(features, "features file") as f:
        for name in names:
            keypoints = read_keypoints(f, name)
            width, height = read_image_size(f, name)
            outside = ((keypoints < -1) | (keypoints > np.array([width, height]))).any(axis=1)
            if outside.any():
                raise H5FormatError(f"{features}: {int(outside.sum())} keypoints of {name!r} lie outside its "
                                    f"{width}x{height} image, e.g. {keypoints[outside][0].tolist()}")
            masks[name] = ((keypoints[:, 0] < margin - 0.5) | (keypoints[:, 1] < margin - 0.5)
                           | (keypoints[:, 0] > width - margin - 0.5) | (keypoints[:, 1] > height - margin - 0.5)
                           if margin > 0 else np.zeros(len(keypoints), bool))
    return masks


def import_matches(db: pycolmap.Database, pairs: list[tuple[str, str]], matches: Path,
                   image_ids: dict[str, int], min_match_score: float | None,
                   identities: dict[str, tuple[int, str]],
                   excluded: dict[str, np.ndarray] | None = None) -> list[PairStats]:
    """Raw matches of every pair whose images are both in the database, checked against the
    images' keypoint counts; matches touching a keypoint marked in `excluded` (name -> mask, e.g.
    `border_keypoints`) are left out."""
    stats = []
    with open_h5(matches, "matches file") as f:
        for name0, name1 in pairs:
            (count0, id0), (count1, id1) = identities[name0], identities[name1]
            pair, scores = read_matches(f, name0, name1, (count0, count1), (id0, id1))
            if min_match_score is not None:
                pair = pair[scores > min_match_score]
            if excluded is not None:
                pair = pair[~(excluded[name0][pair[:, 0]] | excluded[name1][pair[:, 1]])]
            db.write_matches(image_ids[name0], image_ids[name1], np.ascontiguousarray(pair, np.uint32))
            stats.append(PairStats(name0, name1, len(pair)))
    return stats


def verification_options(config: VerificationConfig) -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = config.min_num_inliers
    options.ransac.max_error = config.max_error
    options.ransac.max_num_trials = config.max_num_trials
    options.ransac.min_inlier_ratio = config.ransac_min_inlier_ratio
    options.ransac.random_seed = config.random_seed
    return options


def verify(database: Path, config: VerificationConfig, num_threads: int = -1) -> None:
    """pycolmap's geometric verification of every pair that has raw matches."""
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = num_threads
    pycolmap.geometric_verification(str(database), verifier_options=verifier,
                                    two_view_geometry_options=verification_options(config))


def reject_weak_pairs(db: pycolmap.Database, stats: list[PairStats], image_ids: dict[str, int],
                      config: VerificationConfig) -> None:
    """Fill in the verification numbers of `stats` and delete the two-view geometry of weak pairs."""
    pair_ids, geometries = db.read_two_view_geometries()
    by_pair = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        by_pair[pycolmap.pair_id_to_image_pair(pair_id)] = geometry
    for stat in stats:
        id0, id1 = sorted((image_ids[stat.name0], image_ids[stat.name1]))
        geometry = by_pair.get((id0, id1))
        if geometry is None:
            stat.reason = "no matches to verify" if stat.num_matches == 0 else "not verified"
            continue
        stat.num_inliers = len(geometry.inlier_matches)
        stat.configuration = pycolmap.TwoViewGeometryConfiguration(geometry.config).name
        if stat.num_inliers < max(config.min_pair_inliers, 1):
            stat.reason = f"{stat.num_inliers} inliers < {config.min_pair_inliers}"
        elif stat.inlier_ratio < config.min_pair_inlier_ratio:
            stat.reason = f"inlier ratio {stat.inlier_ratio:.2f} < {config.min_pair_inlier_ratio}"
        else:
            stat.kept = True
            continue
        db.delete_two_view_geometry(id0, id1)


# ----------------------------------------------------------------------------------------------
# The step


def feature_sizes(features: Path) -> dict[str, tuple[int, int]]:
    """Image name -> (W, H) for every image in the features file."""
    with open_h5(features, "features file") as f:
        return {name: read_image_size(f, name) for name in list_h5_names(features)}


def usable_pairs(pairs: Path, sizes: dict[str, tuple[int, int]]) -> list[tuple[str, str]]:
    listed = unique_pairs(read_pairs(pairs))
    usable = [(a, b) for a, b in listed if a in sizes and b in sizes]
    if len(usable) < len(listed):
        logger.warning("%d of %d pairs in %s name images without features (skipped)",
                       len(listed) - len(usable), len(listed), pairs)
    return usable


def main(database: Path, image_dir: Path, pairs: Path, features: Path, matches: Path,
         camera: CameraConfig = CameraConfig(), verification: VerificationConfig = VerificationConfig(),
         num_threads: int = -1) -> DatabaseSummary:
    """Build and verify `database` (replaced atomically; statistics in `<database>.pairs.json`)."""
    database = check_output_path(database, (".db",), "COLMAP database")
    for path, what in ((features, "features"), (matches, "matches"), (pairs, "pairs")):
        if not Path(path).is_file():
            raise DatabaseError(f"{what} file {path} does not exist")
    sizes = feature_sizes(features)
    gone = sorted(n for n in sizes if not resolve_inside(image_dir, n).is_file())
    if gone:  # features kept for images deleted since: not in the database
        logger.warning("%d image(s) of %s are no longer in %s and are left out, e.g. %s", len(gone), features,
                       image_dir, gone[0])
    sizes = {name: size for name, size in sizes.items() if name not in gone}
    names = sorted(sizes)
    if len(names) < 2:
        raise DatabaseError(f"{features} has features of {len(names)} image(s); at least 2 are needed")
    pair_list = usable_pairs(pairs, sizes)
    choices = choose_cameras(image_dir, names, sizes, camera)
    database.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(database):
        image_ids, known, stats, timings = build_database(database, features, matches, names, pair_list, choices,
                                                          verification, num_threads)
    summary = DatabaseSummary(database, image_ids, {n: c.source for n, c in choices.items()}, stats,
                              known, timings)
    write_pair_stats(pair_stats_path(database), stats)
    summary.log()
    return summary


def build_database(database: Path, features: Path, matches: Path, names: list[str],
                   pair_list: list[tuple[str, str]], choices: dict[str, CameraChoice],
                   verification: VerificationConfig, num_threads: int
                   ) -> tuple[dict[str, int], list[int], list[PairStats], dict[str, float]]:
    """Write and verify the database through `<database>.partial`, replaced atomically at the end."""
    timings = {}
    start = time.time()
    with atomic_path(database) as partial:
        with pycolmap.Database.open(str(partial)) as db:
            image_ids, known = write_cameras_and_images(db, choices)
            identities = import_keypoints(db, features, image_ids)
            excluded = border_keypoints(features, names, verification.border_margin)
            stats = import_matches(db, pair_list, matches, image_ids, verification.min_match_score, identities,
                                   excluded)
        timings["database"] = time.time() - start
        start = time.time()
        verify(partial, verification, num_threads)
        with pycolmap.Database.open(str(partial)) as db:
            reject_weak_pairs(db, stats, image_ids, verification)
        timings["verify"] = time.time() - start
    return image_ids, known, stats, timings


def pair_stats_path(database: Path) -> Path:
    return Path(database).with_suffix(".pairs.json")


def write_pair_stats(path: Path, stats: list[PairStats]) -> None:
    write_json(path, [s.as_dict() for s in stats])


def read_pair_stats(path: Path) -> list[PairStats]:
    fields = set(PairStats.__dataclass_fields__)
    return [PairStats(**{k: v for k, v in row.items() if k in fields}) for row in json.loads(Path(path).read_text())]


def verified_graph(stats: list[PairStats]) -> dict[str, dict[str, int]]:
    """name -> {other name: verified inliers} over the kept pairs."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for s in stats:
        if s.kept:
            graph[s.name0][s.name1] = s.num_inliers
            graph[s.name1][s.name0] = s.num_inliers
    return graph


# ----------------------------------------------------------------------------------------------
# CLI


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    default = CameraConfig()
    group = parser.add_argument_group("cameras")
    group.add_argument("--camera-mode", choices=CAMERA_MODES, default=default.mode,
                       help="auto: share a camera among images of equal size and EXIF focal; single: one "
                            "camera; per_image; per_folder: one camera per sub-folder")
    group.add_argument("--camera-model", default=None,
                       help=f"COLMAP camera model (default {default.model}; with --camera-params: "
                            "SIMPLE_PINHOLE for 3 values, PINHOLE for 4)")
    group.add_argument("--camera-params", type=camera_params_argument, default=None,
                       help="known intrinsics of every image in COLMAP order, e.g. fx,fy,cx,cy (COLMAP "
                            "pixels: the centre of the top-left pixel is 0.5,0.5); kept fixed in mapping")
    group.add_argument("--intrinsics", type=Path, default=None,
                       help="per-image known intrinsics, lines 'name MODEL WIDTH HEIGHT params...'")


def camera_config_from_args(args: argparse.Namespace) -> CameraConfig:
    model = args.camera_model
    if args.camera_params is not None:
        return CameraConfig(mode=args.camera_mode, params=tuple(args.camera_params), params_model=model,
                            intrinsics_file=args.intrinsics)
    return CameraConfig(mode=args.camera_mode, model=model or CameraConfig.model,
                        intrinsics_file=args.intrinsics)


def add_verification_arguments(parser: argparse.ArgumentParser) -> None:
    default = VerificationConfig()
    group = parser.add_argument_group("verification")
    group.add_argument("--ransac-max-error", type=float, default=default.max_error, help="px")
    group.add_argument("--min-pair-inliers", type=int, default=default.min_pair_inliers,
                       help="reject verified pairs with fewer inliers")
    group.add_argument("--min-pair-inlier-ratio", type=float, default=default.min_pair_inlier_ratio,
                       help="reject verified pairs whose inliers / raw matches is lower")
    group.add_argument("--min-match-score", type=float, default=default.min_match_score,
                       help="drop raw matches scoring at or below this")


def verification_config_from_args(args: argparse.Namespace) -> VerificationConfig:
    return VerificationConfig(max_error=args.ransac_max_error, min_pair_inliers=args.min_pair_inliers,
                              min_pair_inlier_ratio=args.min_pair_inlier_ratio,
                              min_match_score=args.min_match_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.colmap_db", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--features", type=Path, required=True, help="features HDF5 (hloc format)")
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file")
    parser.add_argument("--matches", type=Path, required=True, help="matches HDF5 (hloc format)")
    parser.add_argument("--output", type=Path, required=True, help="COLMAP database to write (replaced)")
    add_camera_arguments(parser)
    add_verification_arguments(parser)
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with colmap_log_to(args.output.with_suffix(".colmap.log")):
        main(args.output, args.images, args.pairs, args.features, args.matches,
             camera_config_from_args(args), verification_config_from_args(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
