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
import logging
from pathlib import Path

from .colmap import pycolmap
from .cli import run_cli
from .export_kapture import export_kapture, import_kapture
from .formats_d2net import import_d2net_npz, write_d2net_file
from .h5io import iter_features, list_h5_names
from .images import list_images, read_image_list
from .paths import resolve_inside
from .run_folder import RunFolder, check_output_folder, open_run_folder, require_model, staged_folder

logger = logging.getLogger(__name__)


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
