"""Cameras of a COLMAP database (shared layer): which images share a camera, and its intrinsics.

- focal length from EXIF when the image has it (pycolmap's `infer_camera_from_image` with an
  `ImageReaderOptions`), else pycolmap's default prior 1.2 * max(W, H) (marked as no prior);
- known intrinsics for all images (`CameraConfig.params`) or per image (`intrinsics_file`, lines
  `name MODEL W H p1 p2 ...` as hloc's query lists) are marked as priors;
- sharing by `CameraConfig.mode`; one rig per camera and one frame per image, as
  `pycolmap.import_images` writes them.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .colmap import pycolmap
from .colmap_import import DatabaseError
from .paths import resolve_inside, safe_relative_name
from .textfiles import read_text_lines

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "single", "per_image", "per_folder")
MODEL_FOR_PARAM_COUNT = {3: "SIMPLE_PINHOLE", 4: "PINHOLE"}


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
class CameraChoice:
    camera: pycolmap.Camera
    source: str  # "exif", "default" (pycolmap's 1.2 * max(W, H) prior), "known"
    group: tuple  # images with equal groups share the camera


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
    """Camera of `model` with the EXIF focal length when present, else pycolmap's default prior
    (`ImageReaderOptions.default_focal_length_factor` x the longer side), as COLMAP's image reader."""
    width, height = size
    options = pycolmap.ImageReaderOptions()
    options.camera_model = model
    try:
        camera = pycolmap.infer_camera_from_image(str(path), options)
    except ValueError as error:  # pycolmap cannot decode a file that OpenCV could: no EXIF then
        logger.debug("pycolmap cannot read %s (%s); using the default focal prior", path, error)
        focal = options.default_focal_length_factor * max(width, height)
        camera = pycolmap.Camera.create_from_model_name(0, model, focal, width, height)
        camera.has_prior_focal_length = False
    if (camera.width, camera.height) != (width, height):
        raise DatabaseError(f"image {path} is {camera.width}x{camera.height} but its features were "
                            f"extracted from {width}x{height}; extract again (--overwrite)")
    return camera, ("exif" if camera.has_prior_focal_length else "default")


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
