"""Pipeline step: a COLMAP database from d2_sfm features and matches, verified by pycolmap.

python -m d2_sfm.colmap_db --images DIR --features FEATURES.h5 --pairs PAIRS.txt --matches MATCHES.h5
                           --output database.db [--camera-mode auto|single|per_image|per_folder]
                           [--camera-model MODEL] [--camera-params f,cx,cy | fx,fy,cx,cy,...]
                           [--intrinsics FILE] [--min-pair-inliers N] [--min-pair-inlier-ratio R]
                           [--first-pass-trials N]

What goes in (as hloc's `reconstruction.py`, plus safeguards):
- cameras (`colmap_cameras`): shared or not by `CameraConfig.mode`; EXIF, default or known focal;
- keypoints (+0.5 px into COLMAP's convention) and the raw matches of every pair of the pairs file,
  two-view geometries estimated by pycolmap (`colmap_import`), in two passes: every pair with few
  RANSAC trials, then the near misses with the full count (`VerificationConfig.first_pass_trials`);
- weak-pair rejection: verified pairs with fewer than `min_pair_inliers` inliers, or an inlier
  ratio (inliers / raw matches) below `min_pair_inlier_ratio`, are removed so that the mapper never
  registers an image on them. Every pair's numbers go to `<database>.pairs.json`.

The database is built as `<database>.partial` and renamed only when complete: an interrupted run
never leaves a half-written `database.db` behind.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_path
from .cli import run_cli
from .colmap import pycolmap
from .colmap_cameras import (CAMERA_MODES, MODEL_FOR_PARAM_COUNT, CameraChoice, CameraConfig,
                             add_camera_arguments, camera_config_from_args, choose_cameras, parse_camera_params,
                             read_intrinsics_file, write_cameras_and_images)
from .colmap_import import (COLMAP_PIXEL_OFFSET, DatabaseError, PairStats, VerificationConfig,
                            border_keypoints, import_keypoints, import_matches, pair_stats_path, read_pair_stats,
                            verified_graph, verify, write_pair_stats)
from .colmap_log import colmap_log_to
from .datasets.formats import read_pairs, unique_pairs
from .h5io import list_h5_names, open_h5, read_image_size
from .locking import output_lock
from .paths import check_output_path, resolve_inside

logger = logging.getLogger(__name__)

# What other modules and tools take from this step; the shared pieces live in colmap_cameras and
# colmap_import (which other steps import directly) and stay importable from here.
__all__ = ["CAMERA_MODES", "COLMAP_PIXEL_OFFSET", "MODEL_FOR_PARAM_COUNT", "CameraConfig", "DatabaseError",
           "DatabaseSummary", "PairStats", "VerificationConfig", "add_camera_arguments", "add_verification_arguments",
           "border_keypoints", "build_parser", "camera_config_from_args", "cli", "main", "pair_stats_path",
           "parse_camera_params", "read_intrinsics_file", "read_pair_stats", "verification_config_from_args",
           "verified_graph"]


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


def verify_in_two_passes(database: Path, stats: list[PairStats], image_ids: dict[str, int],
                         config: VerificationConfig, num_threads: int) -> None:
    """Every pair with first_pass_trials, then the near misses again with max_num_trials (see
    VerificationConfig); marks the pairs verified twice in `stats`."""
    if config.first_pass_trials is None or config.first_pass_trials >= config.max_num_trials:
        verify(database, config, num_threads)
        return
    verify(database, config, num_threads, config.first_pass_trials)
    near_misses = []
    with pycolmap.Database.open(str(database)) as db:
        for stat in stats:
            id0, id1 = image_ids[stat.name0], image_ids[stat.name1]
            if db.exists_two_view_geometry(id0, id1) and near_miss(
                    len(db.read_two_view_geometry(id0, id1).inlier_matches), stat.num_matches, config):
                db.delete_two_view_geometry(id0, id1)  # pycolmap verifies the pairs without one
                stat.verified_twice = True
                near_misses.append(stat)
    if near_misses:
        logger.info("Verifying %d of %d pairs again with %d RANSAC trials (first pass: %d)", len(near_misses),
                    len(stats), config.max_num_trials, config.first_pass_trials)
        verify(database, config, num_threads)


def near_miss(num_inliers: int, num_matches: int, config: VerificationConfig) -> bool:
    """Rejected by the weak-pair rule, but close enough that more RANSAC trials could keep it."""
    fraction = config.second_pass_fraction
    ratio = num_inliers / num_matches if num_matches else 0.0
    rejected = bool(weak_pair_reason(num_inliers, num_matches, config))
    return rejected and num_inliers >= fraction * config.min_pair_inliers and ratio >= fraction * config.min_pair_inlier_ratio


def weak_pair_reason(num_inliers: int, num_matches: int, config: VerificationConfig) -> str:
    """Why a verified pair is too weak to keep, or "" when it is kept."""
    ratio = num_inliers / num_matches if num_matches else 0.0
    if num_inliers < max(config.min_pair_inliers, 1):
        return f"{num_inliers} inliers < {config.min_pair_inliers}"
    if ratio < config.min_pair_inlier_ratio:
        return f"inlier ratio {ratio:.2f} < {config.min_pair_inlier_ratio}"
    return ""


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
        stat.reason = weak_pair_reason(stat.num_inliers, stat.num_matches, config)
        stat.kept = not stat.reason
        if not stat.kept:
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
        verify_in_two_passes(partial, stats, image_ids, verification, num_threads)
        with pycolmap.Database.open(str(partial)) as db:
            reject_weak_pairs(db, stats, image_ids, verification)
        timings["verify"] = time.time() - start
    return image_ids, known, stats, timings


# ----------------------------------------------------------------------------------------------
# CLI


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
    group.add_argument("--first-pass-trials", type=int, default=default.first_pass_trials,
                       help=f"RANSAC trials of a first verification pass; its near misses are verified again "
                            f"with {default.max_num_trials} (0: one pass with {default.max_num_trials})")


def verification_config_from_args(args: argparse.Namespace) -> VerificationConfig:
    return VerificationConfig(max_error=args.ransac_max_error, min_pair_inliers=args.min_pair_inliers,
                              min_pair_inlier_ratio=args.min_pair_inlier_ratio,
                              min_match_score=args.min_match_score,
                              first_pass_trials=args.first_pass_trials or None)


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
