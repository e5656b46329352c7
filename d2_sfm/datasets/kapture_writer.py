"""Writing kapture localization datasets: the synthetic Aachen look-alike converted into
mapping/ and query/ kapture folders (`python -m d2_sfm.datasets.kapture_dataset --output DIR`)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import write_text
from ..colmap import pycolmap
from . import DatasetError
from .aachen import MODEL_V1_1_DIR, AachenDataset
from .formats import num, qt_from_rigid, read_pairs, read_poses
from .kapture_dataset import (KAPTURE_HEADER, MAPPING_DIR, QUERY_DIR, RECORDS_DIR, RECORDS_FILE, SENSORS_FILE,
                              TRAJECTORIES_FILE)

logger = logging.getLogger(__name__)


def kapture_table(header: str, rows: list[list[str]]) -> str:
    """kapture's CSV text: version line, column line, `, `-joined rows."""
    return "".join(f"{line}\n" for line in [KAPTURE_HEADER, header] + [", ".join(row) for row in rows])


def camera_row(sensor_id: str, camera: pycolmap.Camera) -> list[str]:
    return [sensor_id, "", "camera", camera.model.name, str(camera.width), str(camera.height),
            *(num(p) for p in camera.params)]


def pose_row(timestamp: int, sensor_id: str, pose: pycolmap.Rigid3d) -> list[str]:
    q, t = qt_from_rigid(pose)
    return [str(timestamp), sensor_id, *map(num, q), *map(num, t)]


def write_kapture_folder(folder: Path, images: list[tuple[str, Path, pycolmap.Camera, pycolmap.Rigid3d | None]]
                         ) -> None:
    """A kapture folder: one camera sensor per distinct intrinsics, one record per image (copied
    into records_data), and the poses given. `images`: (record path, source file, camera, pose)."""
    sensors: dict[str, str] = {}  # camera fields -> sensor id
    sensor_rows, record_rows, pose_rows = [], [], []
    for timestamp, (path, source, camera, pose) in enumerate(images):
        key = " ".join(camera_row("", camera))
        if key not in sensors:
            sensors[key] = f"cam{len(sensors):03d}"
            sensor_rows.append(camera_row(sensors[key], camera))
        sensor_id = sensors[key]
        record_rows.append([str(timestamp), sensor_id, path])
        if pose is not None:
            pose_rows.append(pose_row(timestamp, sensor_id, pose))
        target = folder / RECORDS_DIR / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (folder / "sensors").mkdir(parents=True, exist_ok=True)
    (folder / SENSORS_FILE).write_text(kapture_table("# sensor_id, name, sensor_type, [sensor_params]+",
                                                     sensor_rows))
    (folder / RECORDS_FILE).write_text(kapture_table("# timestamp, device_id, image_path", record_rows))
    if pose_rows:
        (folder / TRAJECTORIES_FILE).write_text(kapture_table("# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz",
                                                              pose_rows))


def kapture_names_of_synthetic(src_root: Path) -> dict[str, str]:
    """{Aachen name (relative to images_upright): kapture name (relative to the kapture root)}:
    to translate the synthetic dataset's pairs files (`pairs/*.txt`) for the kapture copy."""
    dataset = AachenDataset.from_root(src_root, synthetic_version(src_root), check_images=False)
    names = {im.name: f"{MAPPING_DIR}/{RECORDS_DIR}/{im.name}" for im in dataset.database}
    names.update({q.name: f"{QUERY_DIR}/{RECORDS_DIR}/{q.name}" for q in dataset.queries})
    return names


def synthetic_version(src_root: Path) -> str:
    return "v1_1" if (Path(src_root) / MODEL_V1_1_DIR).is_dir() else "v1_0"


def translate_pairs(src_pairs: Path, dst_pairs: Path, names: dict[str, str]) -> Path:
    """A pairs file of the synthetic Aachen dataset rewritten with kapture names."""
    unknown = sorted({name for pair in read_pairs(src_pairs) for name in pair if name not in names})
    if unknown:
        raise DatasetError(f"{src_pairs}: {len(unknown)} names are not images of the dataset, e.g. {unknown[0]!r}")
    lines = [f"{names[a]} {names[b]}" for a, b in read_pairs(src_pairs)]
    return write_text(Path(dst_pairs), "\n".join(lines) + "\n")


def write_kapture_from_synthetic(src_root: Path, dst_root: Path) -> Path:
    """Convert a synthetic Aachen dataset (d2_sfm.datasets.synthetic, v1.0 or v1.1 layout) into a
    kapture localization dataset at `dst_root` (created; must not exist or be empty): mapping/
    with the database poses, query/ with the query intrinsics and, from ground_truth/queries.txt,
    the query poses in query/sensors/trajectories.txt. The source is only read. Written into a
    temporary folder beside `dst_root` and renamed, so a failure leaves no half dataset."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    dataset = AachenDataset.from_root(src_root, synthetic_version(src_root))
    truth_file = src_root / "ground_truth" / "queries.txt"
    truth = read_poses(truth_file) if truth_file.is_file() else {}
    if dst_root.exists() and (not dst_root.is_dir() or any(dst_root.iterdir())):
        raise DatasetError(f"{dst_root}: exists and is not an empty folder (choose a new output folder)")
    dst_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst_root.name}.", dir=dst_root.parent))
    try:
        write_kapture_folder(staging / MAPPING_DIR, [(im.name, dataset.image_dir / im.name, im.camera,
                                                      im.cam_from_world) for im in dataset.database])
        write_kapture_folder(staging / QUERY_DIR, [(q.name, dataset.image_dir / q.name, q.camera,
                                                    truth.get(q.basename)) for q in dataset.queries])
        if dst_root.exists():
            dst_root.rmdir()  # empty, checked above
        os.replace(staging, dst_root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("Wrote a kapture localization dataset (%d mapping images, %d queries, %d query poses) to %s",
                len(dataset.database), len(dataset.queries), len(truth), dst_root)
    return dst_root
