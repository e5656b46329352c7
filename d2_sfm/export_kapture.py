"""Export a run to kapture 1.1.12 (`python -m d2_sfm.export kapture`; see d2_sfm.export)."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .colmap import pycolmap
from .colmap_readonly import read_cameras, read_image_ids
from .datasets.formats import qt_from_rigid
from .h5io import iter_features, list_h5_names
from .paths import resolve_inside
from .run_folder import ExportError, RunFolder, image_sizes, iter_pair_matches, require_model

logger = logging.getLogger(__name__)

KEYPOINTS_TYPE = "d2net"  # kapture feature type, as in the official d2-net extract_kapture.py
COLMAP_PIXEL_OFFSET = 0.5  # d2_sfm keypoints (pixel centre = integer) -> COLMAP / kapture
KAPTURE_HINT = "pip install 'd2_sfm[kapture]' (kapture==1.1.12)"


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
