"""Export a d2_sfm run to the formats neighbouring tools read, and import official `.d2-net` files.

python -m d2_sfm.export kapture      --input OUT --output DIR [--images IMAGES] [--image-files link|copy|none]
python -m d2_sfm.export colmap-text  --input OUT --output DIR
python -m d2_sfm.export d2net-npz    --input OUT --output DIR
python -m d2_sfm.export import-d2net --images DIR --output features.h5 [--image-list FILE] [--overwrite]

OUT is a `reconstruct` output folder (features.h5, pairs.txt, matches.h5, database.db, sfm/) or a
`localize` one (features.h5, pairs-db-covis.txt + matches-db.h5, pairs-query.txt + matches-query.h5,
sfm_d2/ for Aachen, summary.json with the query poses).

- kapture (kapture 1.1.12, `pip install 'd2_sfm[kapture]'`): sensors (the model's cameras; images
  outside the model get the database's camera, or an UNKNOWN_CAMERA of their size), records,
  trajectories (world-to-camera poses of registered images, and of localized queries), keypoints
  and descriptors `d2net` (float32; keypoints x, y, scale=1 in **COLMAP's pixel convention**, i.e.
  d2_sfm's + 0.5, because kapture's COLMAP converters and kapture-localization pass keypoints to
  COLMAP unchanged), raw matches of every matched pair (index0, index1, matching score), 3D points
  with colours, and their observations (keypoint indices). Image files are linked (default),
  copied, or left out of `sensors/records_data/`.
- colmap-text: the model as COLMAP text (cameras.txt, images.txt, points3D.txt), by pycolmap.
- d2net-npz: one `<image name>.d2-net` per image, in the official layout (see formats_d2net).

Every export is written into `<DIR>.partial` and renamed to DIR when complete: a failed export
leaves no half-written DIR. An existing non-empty DIR is only replaced with --overwrite, and DIR
may not be (or contain) the input folder or the image folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .colmap import pycolmap
from .cli import run_cli
from .colmap_readonly import read_cameras, read_image_ids
from .colmap_model import read_model
from .datasets.formats import qt_from_rigid, read_pairs, rigid_from_qt
from .errors import D2SfmError
from .formats_d2net import import_d2net_npz, write_d2net_file
from .h5io import find_pair, list_h5_names, open_h5
from .images import list_images
from .paths import resolve_inside, safe_relative_name

logger = logging.getLogger(__name__)

KEYPOINTS_TYPE = "d2net"  # kapture feature type, as in the official d2-net extract_kapture.py
COLMAP_PIXEL_OFFSET = 0.5  # d2_sfm keypoints (pixel centre = integer) -> COLMAP / kapture
KAPTURE_HINT = "pip install 'd2_sfm[kapture]' (kapture==1.1.12)"


class ExportError(D2SfmError, ValueError):
    """An input folder that cannot be exported, or an output that cannot be written."""


# ----------------------------------------------------------------------------------------------
# What a run folder holds


@dataclass
class RunFolder:
    """The files of a `reconstruct` or `localize` output folder that exports read."""
    root: Path
    kind: str  # "reconstruct" | "localize"
    features: Path
    model: Path | None  # COLMAP model folder, when the run built one
    match_files: list[tuple[Path, Path]] = field(default_factory=list)  # (pairs file, matches file)
    database: Path | None = None
    summary: dict = field(default_factory=dict)

    @property
    def image_dir(self) -> Path | None:
        """The image folder recorded by reconstruct (localize records the dataset root only)."""
        images = self.summary.get("images")
        return Path(images) if isinstance(images, str) and Path(images).is_dir() else None

    def query_poses(self) -> dict[str, pycolmap.Rigid3d]:
        """Localized queries (name -> cam_from_world) from a localize summary.json."""
        poses = {}
        for query in self.summary.get("queries", []) or []:
            pose = query.get("cam_from_world") if isinstance(query, dict) else None
            if pose:
                try:
                    poses[safe_relative_name(str(query["name"]), "summary.json")] = rigid_from_qt(
                        pose["qvec_wxyz"], pose["tvec"], "summary.json query pose")
                except (KeyError, TypeError, ValueError) as error:
                    raise ExportError(f"{self.root / 'summary.json'}: malformed query pose ({error})") from None
        return poses


def read_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: not a readable summary.json ({error})") from None
    return data if isinstance(data, dict) else {}


def open_run_folder(root: Path) -> RunFolder:
    """Recognise a reconstruct or localize output folder; one error line when it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"input {root} is not a folder (expected a reconstruct or localize output folder)")
    features = root / "features.h5"
    if not features.is_file():
        raise ExportError(f"{root} has no features.h5: not a reconstruct or localize output folder "
                          "(or the run stopped before extraction finished)")
    summary = read_summary(root / "summary.json")
    if (root / "matches-query.h5").exists() or (root / "sfm_d2").is_dir() or "dataset" in summary:
        pairs = [(root / "pairs-db-covis.txt", root / "matches-db.h5"),
                 (root / "pairs-query.txt", root / "matches-query.h5")]
        model = root / "sfm_d2"
        return RunFolder(root, "localize", features, model if model.is_dir() else None,
                         [p for p in pairs if p[0].is_file() and p[1].is_file()], None, summary)
    model = root / "sfm"
    database = root / "database.db"
    pairs = [(root / "pairs.txt", root / "matches.h5")]
    return RunFolder(root, "reconstruct", features, model if model.is_dir() else None,
                     [p for p in pairs if p[0].is_file() and p[1].is_file()],
                     database if database.is_file() else None, summary)


def require_model(run: RunFolder) -> pycolmap.Reconstruction:
    if run.model is None:
        raise ExportError(f"{run.root} holds no COLMAP model (sfm/ or sfm_d2/): the run built none "
                          "(InLoc localization, or a reconstruction that stopped before mapping)")
    return read_model(run.model, ExportError)


# ----------------------------------------------------------------------------------------------
# Output folders written whole or not at all


def check_output_folder(output: Path, protected: list[Path], overwrite: bool) -> Path:
    """DIR may not be or contain an input; an existing non-empty DIR needs `overwrite`."""
    output = Path(output)
    resolved = output.resolve()
    for path in protected:
        path = Path(path).resolve()
        if resolved == path or resolved in path.parents:
            raise ExportError(f"output {output} is or contains the input folder {path}; choose another folder")
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"output {output} exists and is not empty; use --overwrite to replace it")
    return output


def staged_folder(output: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` into `<output>.partial`, then put it in place of `output` (whole or nothing)."""
    output = Path(output)
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return output


# ----------------------------------------------------------------------------------------------
# Reading features and matches


def iter_features(features: Path, names: list[str]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(name, {keypoints (N, 2), descriptors (N, D) float32, scores (N,), image_size}) per image."""
    with open_h5(features, "features file") as f:
        for name in names:
            group = f[name]
            try:
                yield name, {"keypoints": group["keypoints"][()].astype(np.float32).reshape(-1, 2),
                             "descriptors": group["descriptors"][()].astype(np.float32).T,
                             "scores": group["scores"][()].astype(np.float32).reshape(-1),
                             "image_size": group["image_size"][()]}
            except KeyError as error:
                raise ExportError(f"{features}: features of {name!r} lack {error}") from None


def image_sizes(features: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    with open_h5(features, "features file") as f:
        return {name: tuple(int(v) for v in f[name]["image_size"][()]) for name in names}


def iter_pair_matches(run: RunFolder, names: set[str]) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name0, name1, matches (M, 2), scores (M,)) of every matched pair, each pair once."""
    seen: set[tuple[str, str]] = set()
    for pairs_file, matches_file in run.match_files:
        with open_h5(matches_file, "matches file") as f:
            for name0, name1 in read_pairs(pairs_file):
                key = tuple(sorted((name0, name1)))
                if key in seen or name0 == name1 or not {name0, name1} <= names:
                    continue
                seen.add(key)
                try:
                    group_key, reverse = find_pair(f, name0, name1)
                except D2SfmError:
                    logger.warning("%s lists (%s, %s) but %s has no matches for it; skipped",
                                   pairs_file, name0, name1, matches_file)
                    continue
                matches0 = f[group_key]["matches0"][()].astype(np.int64)
                scores0 = f[group_key]["matching_scores0"][()].astype(np.float64)
                idx = np.flatnonzero(matches0 >= 0)
                pairs = np.stack([idx, matches0[idx]], axis=1)
                yield (name1, name0, pairs[:, ::-1], scores0[idx]) if reverse else (name0, name1, pairs, scores0[idx])


# ----------------------------------------------------------------------------------------------
# d2net-npz


def export_d2net_npz(run: RunFolder, output: Path) -> dict[str, int]:
    """One official-layout `.d2-net` file per image under `output` (image name + `.d2-net`)."""
    names = list_h5_names(run.features)
    counts = {}
    for name, feats in iter_features(run.features, names):
        write_d2net_file(resolve_inside(output, name + ".d2-net", str(run.features)), feats["keypoints"],
                         feats["scores"], feats["descriptors"])
        counts[name] = len(feats["keypoints"])
    return counts


# ----------------------------------------------------------------------------------------------
# colmap-text


def export_colmap_text(run: RunFolder, output: Path) -> pycolmap.Reconstruction:
    model = require_model(run)
    model.write_text(str(output))
    return model


# ----------------------------------------------------------------------------------------------
# kapture


def import_kapture():
    """The kapture package, or one line saying how to install it."""
    try:
        import kapture  # noqa: F401
        import kapture.io.csv  # noqa: F401
        import kapture.io.features  # noqa: F401
        import kapture.io.records  # noqa: F401
    except ImportError as error:
        raise ExportError(f"the kapture export needs the kapture package ({error}); {KAPTURE_HINT}") from None
    return kapture


def kapture_camera(kapture, camera: pycolmap.Camera):
    """kapture.Camera from a pycolmap one: params are [width, height, *COLMAP params]."""
    name = camera.model.name
    if name not in kapture.CameraType.__members__:
        raise ExportError(f"camera model {name} has no kapture equivalent")
    return kapture.Camera(name, [int(camera.width), int(camera.height)] + [float(v) for v in camera.params])


def database_cameras(database: Path | None) -> tuple[dict[str, int], dict[int, pycolmap.Camera]]:
    """image name -> camera id, camera id -> camera, from a COLMAP database (empty without one)."""
    if database is None:
        return {}, {}
    return ({name: camera_id for name, (_, camera_id) in read_image_ids(database).items()},
            read_cameras(database))


@dataclass
class KaptureCounts:
    images: int = 0
    registered: int = 0
    keypoints: dict[str, int] = field(default_factory=dict)
    matches: dict[tuple[str, str], int] = field(default_factory=dict)
    points3D: int = 0
    observations: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"images": self.images, "registered": self.registered, "keypoints": sum(self.keypoints.values()),
                "pairs": len(self.matches), "matches": sum(self.matches.values()), "points3D": self.points3D,
                "observations": self.observations}


def export_kapture(run: RunFolder, output: Path, image_dir: Path | None = None,
                   image_files: str = "link") -> KaptureCounts:
    """Write `run` as a kapture folder (see the module docstring for what goes where)."""
    kapture = import_kapture()
    from kapture.io.csv import kapture_to_dir
    from kapture.io.features import (get_descriptors_fullpath, get_keypoints_fullpath, get_matches_fullpath,
                                     image_descriptors_to_file, image_keypoints_to_file, image_matches_to_file)
    from kapture.io.records import get_image_fullpath

    names = list_h5_names(run.features)
    model = require_model(run) if run.model is not None else None
    counts = KaptureCounts(images=len(names))
    sensors, records, trajectories = kapture.Sensors(), kapture.RecordsCamera(), kapture.Trajectories()
    sensor_of = camera_sensors(kapture, run, model, names, sensors)
    poses = model_poses_by_name(model)
    poses.update({n: p for n, p in run.query_poses().items() if n in sensor_of})
    for timestamp, name in enumerate(names):
        records[timestamp, sensor_of[name]] = name
        if name in poses:
            qvec, tvec = qt_from_rigid(poses[name])
            trajectories[timestamp, sensor_of[name]] = kapture.PoseTransform(r=qvec.tolist(), t=tvec.tolist())
    counts.registered = len(poses)

    descriptor_dim = None
    for name, feats in iter_features(run.features, names):
        keypoints = np.concatenate([feats["keypoints"] + COLMAP_PIXEL_OFFSET,
                                    np.ones((len(feats["keypoints"]), 1), np.float32)], axis=1)
        image_keypoints_to_file(get_keypoints_fullpath(KEYPOINTS_TYPE, str(output), name), keypoints)
        image_descriptors_to_file(get_descriptors_fullpath(KEYPOINTS_TYPE, str(output), name),
                                  np.ascontiguousarray(feats["descriptors"], np.float32))
        descriptor_dim = feats["descriptors"].shape[1]
        counts.keypoints[name] = len(keypoints)
    keypoints = kapture.Keypoints(KEYPOINTS_TYPE, np.float32, 3, set(names))
    descriptors = kapture.Descriptors(KEYPOINTS_TYPE, np.float32, descriptor_dim or 512, KEYPOINTS_TYPE, "L2",
                                      set(names))

    matches = kapture.Matches()
    for name0, name1, pairs, scores in iter_pair_matches(run, set(names)):
        if name1 < name0:  # kapture stores each pair once, names in lexicographic order
            name0, name1, pairs = name1, name0, pairs[:, ::-1]
        table = np.concatenate([pairs.astype(np.float64), scores.reshape(-1, 1)], axis=1)
        image_matches_to_file(get_matches_fullpath((name0, name1), KEYPOINTS_TYPE, str(output)),
                              np.ascontiguousarray(table, np.float64).reshape(-1, 3))
        matches.add(name0, name1)
        counts.matches[(name0, name1)] = len(pairs)

    points3d, observations = kapture_points(kapture, model, set(names), counts)
    data = kapture.Kapture(sensors=sensors, records_camera=records, trajectories=trajectories or None,
                           keypoints={KEYPOINTS_TYPE: keypoints}, descriptors={KEYPOINTS_TYPE: descriptors},
                           matches={KEYPOINTS_TYPE: matches}, points3d=points3d, observations=observations)
    kapture_to_dir(str(output), data)
    if image_files != "none":
        link_images(image_dir or run.image_dir, names, lambda n: Path(get_image_fullpath(str(output), n)),
                    image_files)
    return counts


def camera_sensors(kapture, run: RunFolder, model: pycolmap.Reconstruction | None, names: list[str],
                   sensors) -> dict[str, str]:
    """Fill `sensors`; image name -> sensor id. Model cameras first (refined), then the database's
    (images left unregistered), then one UNKNOWN_CAMERA per image size (e.g. localize queries)."""
    sensor_of: dict[str, str] = {}
    model_cameras = dict(model.cameras) if model is not None else {}
    if model is not None:
        for image in model.images.values():
            sensor_of[image.name] = f"cam{image.camera_id:05d}"
    db_camera_of, db_cameras = database_cameras(run.database)
    for name in names:
        if name not in sensor_of and name in db_camera_of:
            sensor_of[name] = f"cam{db_camera_of[name]:05d}"
    for sensor_id in set(sensor_of.values()):
        camera_id = int(sensor_id[3:])
        camera = model_cameras.get(camera_id) or db_cameras.get(camera_id)
        sensors[sensor_id] = kapture_camera(kapture, camera)
    sizes = image_sizes(run.features, [n for n in names if n not in sensor_of])
    for name, (width, height) in sizes.items():
        sensor_id = f"unknown_{width}x{height}"
        if sensor_id not in sensors:
            sensors[sensor_id] = kapture.Camera(kapture.CameraType.UNKNOWN_CAMERA, [width, height])
        sensor_of[name] = sensor_id
    return {name: sensor_of[name] for name in names}


def model_poses_by_name(model: pycolmap.Reconstruction | None) -> dict[str, pycolmap.Rigid3d]:
    if model is None:
        return {}
    return {image.name: image.cam_from_world() for image in model.images.values() if image.has_pose}


def kapture_points(kapture, model: pycolmap.Reconstruction | None, names: set[str], counts: KaptureCounts):
    """Points3d (x, y, z, r, g, b) and Observations (point index, image, keypoint index)."""
    if model is None or model.num_points3D() == 0:
        return None, None
    ids = sorted(model.points3D)
    rows = np.array([[*model.points3D[i].xyz, *model.points3D[i].color] for i in ids], np.float64)
    observations = kapture.Observations()
    image_names = {image_id: image.name for image_id, image in model.images.items()}
    for index, point_id in enumerate(ids):
        for element in model.points3D[point_id].track.elements:
            name = image_names[element.image_id]
            if name in names:
                observations.add(index, KEYPOINTS_TYPE, name, int(element.point2D_idx))
                counts.observations += 1
    counts.points3D = len(ids)
    return kapture.Points3d(rows), observations


def link_images(image_dir: Path | None, names: list[str], target: Callable[[str], Path], mode: str) -> None:
    """Put the images where kapture expects them (`sensors/records_data/<name>`): symlink or copy."""
    if image_dir is None:
        logger.warning("Image folder unknown (give --images): the kapture folder has no image files")
        return
    for name in names:
        source = resolve_inside(image_dir, name)
        if not source.is_file():
            logger.warning("Image %s not found; left out of the kapture folder", source)
            continue
        destination = target(name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copy2(source, destination)
        else:
            os.symlink(source.resolve(), destination)


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.export", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (("kapture", "kapture folder (needs the kapture package)"),
                               ("colmap-text", "COLMAP text model"),
                               ("d2net-npz", "official .d2-net npz files, one per image")):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("--input", type=Path, required=True, help="reconstruct or localize output folder")
        sub.add_argument("--output", type=Path, required=True, help="folder to create")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
        if command == "kapture":
            sub.add_argument("--images", type=Path, help="image folder (default: the one in summary.json)")
            sub.add_argument("--image-files", choices=("link", "copy", "none"), default="link",
                             help="put the images into sensors/records_data as symlinks (default), copies, or not")
    sub = commands.add_parser("import-d2net", help="official <image>.d2-net files -> features.h5 (hloc format)")
    sub.add_argument("--images", type=Path, required=True, help="image folder holding <image>.d2-net files")
    sub.add_argument("--output", type=Path, required=True, help="features file to write (.h5)")
    sub.add_argument("--image-list", type=Path, help="image names to import (default: every image in --images)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing features file")
    return parser


def run_import(args: argparse.Namespace) -> int:
    from .extract import read_image_list

    names = read_image_list(args.image_list) if args.image_list else list_images(args.images)
    summary = import_d2net_npz(args.images, names, args.output, overwrite=args.overwrite)
    print(f"{len(summary.imported)} images, {sum(summary.num_keypoints.values())} keypoints "
          f"({summary.descriptor_dim}-D descriptors) -> {summary.output}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "import-d2net":
        return run_import(args)
    run = open_run_folder(args.input)
    image_dir = getattr(args, "images", None) or run.image_dir
    protected = [run.root] + ([image_dir] if image_dir else [])
    output = check_output_folder(args.output, protected, args.overwrite)
    if args.command == "kapture":
        import_kapture()  # before any work: one line when it is not installed
        result: dict[str, object] = {}
        staged_folder(output, lambda d: result.update(
            export_kapture(run, d, image_dir, args.image_files).as_dict()))
        print(f"kapture: {result} -> {output}")
    elif args.command == "colmap-text":
        require_model(run)
        model = []
        staged_folder(output, lambda d: model.append(export_colmap_text(run, d)))
        print(f"COLMAP text model: {model[0].num_reg_images()} images, {model[0].num_points3D()} points -> {output}")
    else:
        counts: dict[str, int] = {}
        staged_folder(output, lambda d: counts.update(export_d2net_npz(run, d)))
        print(f"{len(counts)} .d2-net files, {sum(counts.values())} keypoints -> {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
