"""Shared pieces of the command-line entry points: logging set-up, error reporting, options."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable

from .configs import PRECISIONS, REFINE_MODES, ExtractionConfig, RefineConfig
from .errors import D2SfmError
from .paths import check_output_path  # noqa: F401  (re-exported for the command-line tools)

logger = logging.getLogger("d2_sfm")


EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # an uncaught exception (a bug): Python prints the traceback
EXIT_BAD_INPUT = 2  # bad input, nothing could be done, or the system refused a read or write
EXIT_UNRELIABLE = 3  # reconstruct: a model was built but failed the reliability checks
EXIT_INTERRUPTED = 130  # Ctrl-C


def run_cli(cli: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Configure logging, run `cli`, and turn user-facing errors into one line and an exit code.

    Exit codes of every d2_sfm command: 0 success; 2 bad input (D2SfmError: a bad file, option or
    dataset), nothing could be done, or an operating-system error that escaped (OSError: a
    read-only output folder, a full disk, a permission, an HDF5 file h5py cannot open), each
    reported as one line naming the path; 3 an unreliable reconstruction; 130 interrupted;
    1 only for a bug (traceback). Set D2_SFM_DEBUG=1 to get tracebacks for OSErrors too.
    """
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return cli(argv)
    except D2SfmError as error:
        logger.error("%s", error)
        return EXIT_BAD_INPUT
    except OSError as error:
        if os.environ.get("D2_SFM_DEBUG", "0") == "1":
            raise
        logger.debug("OSError details", exc_info=True)
        logger.error("%s", os_error_line(error))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        logger.error("Interrupted: finished steps and written items are kept; run again to resume")
        return EXIT_INTERRUPTED


def os_error_line(error: OSError) -> str:
    """One line for an OSError: the path(s) and the reason, e.g. "out/f.h5: No space left on device
    (free some space ...)". h5py's errors name no file: it is looked up in the traceback."""
    reason = error.strerror or (str(error).strip().splitlines() or [type(error).__name__])[0]
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space or write elsewhere, then run again to resume)"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (check the folder's permissions, or write elsewhere)"
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    hdf5 = None if paths else hdf5_file_name(error)
    if hdf5 is not None:
        return f"HDF5 file {hdf5}: {reason}"
    where = " -> ".join(os.fsdecode(p) for p in paths)
    return f"{where}: {reason}" if where else f"{type(error).__name__}: {reason}"


def hdf5_file_name(error: BaseException) -> str | None:
    """The file h5py was opening when it raised (its messages do not name it), found in the
    traceback's h5py frames; None when the error did not come from opening an HDF5 file."""
    name = None
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if "h5py" in frame.f_code.co_filename:
            candidate = frame.f_locals.get("name") if frame.f_code.co_filename.endswith("files.py") else None
            if isinstance(candidate, (str, bytes, os.PathLike)):  # File(name) / make_fid(name)
                name = os.fsdecode(candidate)
            else:  # a dataset or group method: self.file is the open file
                try:
                    name = str(frame.f_locals["self"].file.filename)
                except Exception:  # noqa: BLE001  (best effort: closed file, no self)
                    pass
        traceback = traceback.tb_next
    return name


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that extracts features, with ExtractionConfig's defaults
    (configs: no torch, so a command's --help and argument errors stay instant)."""
    default = ExtractionConfig()

    def value(name: str) -> object:
        return getattr(default, name)

    group = parser.add_argument_group("D2-Net features")
    group.add_argument("--weights", default=None,
                       help="d2_tf, d2_ots, d2_tf_no_phototourism (downloaded), hed_vgg16 (offline), "
                            "or a checkpoint path; default: d2_tf if available, else hed_vgg16")
    group.add_argument("--multiscale", action="store_true", help="image pyramid at scales 0.5, 1, 2")
    group.add_argument("--max-edge", type=int, default=value("max_edge"), help="longest image side (px)")
    group.add_argument("--max-sum-edges", type=int, default=value("max_sum_edges"), help="max width + height (px)")
    group.add_argument("--max-keypoints", type=int, default=value("max_keypoints"),
                       help="keep the K best-scoring keypoints per image")
    group.add_argument("--preprocessing", choices=("caffe", "torch"), default=value("preprocessing"))
    group.add_argument("--tile-size", type=int, default=value("tile_size"),
                       help="run the network in tiles of this many px per side (exact; bounds memory; 0: whole "
                            "image)")
    group.add_argument("--precision", choices=PRECISIONS, default=value("precision"),
                       help="network arithmetic: auto (fp32: bf16 kept too few keypoints within 1 px), fp32 (exact), "
                            "bf16 (faster on CPUs with native bf16), fp16 or tf32 (CUDA only)")
    group.add_argument("--half", action="store_true", help="same as --precision fp16 (CUDA only)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def given(**values: object) -> dict[str, object]:
    """The options the user gave (argparse default None): the rest keep their config's default."""
    return {name: value for name, value in values.items() if value is not None}


def extraction_config_from_args(args: argparse.Namespace) -> ExtractionConfig:
    values = given(max_edge=args.max_edge, max_sum_edges=args.max_sum_edges, max_keypoints=args.max_keypoints,
                   preprocessing=args.preprocessing, tile_size=args.tile_size,
                   precision="fp16" if args.half else args.precision)
    if values.get("tile_size") == 0:
        values["tile_size"] = None
    return ExtractionConfig(multiscale=args.multiscale, **values)


def add_refine_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--refine of the commands that refine keypoints before geometry; `what`: which keypoints."""
    parser.add_argument("--refine", choices=REFINE_MODES, default=RefineConfig.mode,
                        help=f"keypoint refinement: keypoints ({what}, by photometric patch alignment along "
                             "tracks; OUT/*refined.h5, the input features stay as they are), keypoints+bundle "
                             "(then, after geometry, every observation of each 3D point aligned to one reference, "
                             "inconsistent ones dropped, and a featuremetric bundle adjustment of the poses and "
                             "points) or none")


def refine_config_from_args(args: argparse.Namespace) -> RefineConfig:
    return RefineConfig(mode=args.refine)
