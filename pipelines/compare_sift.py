"""D2-Net (d2_sfm) against pycolmap's own SIFT pipeline on the same folder, side by side.

python pipelines/compare_sift.py --images DIR --output OUT [--max-edge N] [--weights NAME]
       [--camera-params fx,fy,cx,cy] [--ground-truth FILE] [--skip-sift] [--skip-d2]

Both pipelines: exhaustive pairs, the same camera settings (EXIF or default focal prior, or the
known intrinsics), pycolmap's incremental mapper, longest image side `--max-edge`.
- SIFT: pycolmap.extract_features (8192 features) -> match_exhaustive (mutual, ratio 0.8, verified)
  -> incremental_mapping, in OUT/sift/.
- D2: python -m d2_sfm.reconstruct, in OUT/d2/.
Writes OUT/comparison.json and prints a Markdown table: registered views, 3D points, mean track
length, mean reprojection error, pose errors against the ground truth (if given), time per step.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import h5py

from d2_sfm.alignment import read_ground_truth_file
from d2_sfm.cli import run_cli
from d2_sfm.colmap import pycolmap
from d2_sfm.colmap_cameras import CAMERA_MODES, MODEL_FOR_PARAM_COUNT, CameraConfig, parse_camera_params
from d2_sfm.colmap_import import read_pair_stats
from d2_sfm.h5io import list_h5_names
from d2_sfm.images import list_images

logger = logging.getLogger("compare_sift")
MIN_VERIFIED = 15  # pycolmap's TwoViewGeometryOptions.min_num_inliers


def run_sift(image_dir: Path, output: Path, max_edge: int | None, camera: CameraConfig
             ) -> tuple[pycolmap.Reconstruction | None, dict[str, object]]:
    """pycolmap's SIFT pipeline into `output` (its best model in output/models); returns that model
    and the database's numbers with the time per step. Needs nothing but pycolmap, so that a process
    running only this (pipelines/benchmark_reconstruct.py) pays no torch import."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, str(output / "colmap.log"))
    database = output / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera.model
    if camera.params is not None:
        reader.camera_model = camera.params_model or MODEL_FOR_PARAM_COUNT[len(camera.params)]
        reader.camera_params = ",".join(map(str, camera.params))
    mode = getattr(pycolmap.CameraMode, camera.mode.upper())
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_edge or -1
    timings = {}
    start = time.time()
    pycolmap.extract_features(str(database), str(image_dir), camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    timings["extract"] = time.time() - start
    start = time.time()
    pycolmap.match_exhaustive(str(database), device=pycolmap.Device.cpu)
    timings["match+verify"] = time.time() - start
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = 0
    if camera.params is not None:
        with pycolmap.Database.open(str(database)) as db:
            options.constant_cameras = {c.camera_id for c in db.read_all_cameras()}
    start = time.time()
    models = pycolmap.incremental_mapping(str(database), str(image_dir), str(output / "models"), options)
    timings["map"] = time.time() - start
    best = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None)
    with pycolmap.Database.open(str(database)) as db:
        num_keypoints = db.num_keypoints() / max(db.num_images(), 1)
        verified = str(sum(len(g.inlier_matches) >= MIN_VERIFIED for g in db.read_two_view_geometries()[1]))
    if best is not None:
        best.write(str(output / "models"))
    data: dict[str, object] = {"num_images": len(list_images(image_dir)), "mean_keypoints": num_keypoints,
                               "verified_pairs": verified, "timings": {**timings, "total": sum(timings.values())}}
    return best, data


def sift_reconstruction(image_dir: Path, output: Path, max_edge: int | None, camera: CameraConfig,
                        ground_truth: dict | None) -> dict[str, object]:
    """pycolmap's SIFT pipeline; returns the same statistics as d2_sfm's summary.json."""
    from d2_sfm import reconstruct  # here, not at the top: run_sift's processes must not import torch
    best, data = run_sift(image_dir, output, max_edge, camera)
    if best is None:
        return {**data, "num_registered": 0}
    data.update(reconstruct.model_statistics(best))
    if ground_truth:
        data["ground_truth"], _ = reconstruct.ground_truth_report(best, ground_truth)
    return data


def d2_reconstruction(image_dir: Path, output: Path, config, ground_truth: dict | None) -> dict[str, object]:
    """d2_sfm.reconstruct.main with `config` (a ReconstructionConfig); the same statistics as SIFT's."""
    from d2_sfm import reconstruct
    summary = reconstruct.main(image_dir, output, config, overwrite=False, ground_truth=ground_truth)
    data = dict(summary.data)
    names = list_h5_names(output / "features.h5")
    with h5py.File(output / "features.h5", "r") as f:
        data["mean_keypoints"] = sum(f[n]["keypoints"].shape[0] for n in names) / max(len(names), 1)
    stats = read_pair_stats(output / "database.pairs.json")
    verified = sum(s.num_inliers >= MIN_VERIFIED for s in stats)
    data["verified_pairs"] = f"{verified} ({data['pairs']['kept']} kept)"
    return data


def row(label: str, data: dict[str, object]) -> str:
    gt = data.get("ground_truth") or {}
    rel = gt.get("relative_rotation_error_deg") or {}
    rot = gt.get("rotation_error_deg") or {}
    timings = data.get("timings", {})
    cells = [
        label, f"{data.get('num_registered', 0)}/{data['num_images']}", str(data.get("num_points3D", "-")),
        f"{data.get('mean_track_length', 0):.2f}", f"{data.get('mean_reprojection_error', 0):.2f}",
        f"{data.get('mean_keypoints', 0):.0f}", str(data.get("verified_pairs", "-")),
        f"{rel['median']:.2f} / {rel['max']:.2f}" if rel.get("median") is not None else "-",
        f"{rot['median']:.2f}" if rot.get("median") is not None else "-",
        str(data.get("status", "-")),
        ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| pipeline | registered | points | track length | reproj. error (px) | keypoints/img | verified pairs "
          "(>= 15 inliers) | rel. rotation err. median / max (deg) | abs. rotation err. median (deg, Sim3) "
          "| status | time (s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--max-edge", type=int, default=1024)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--multiscale", action="store_true")
    parser.add_argument("--camera-mode", choices=CAMERA_MODES, default="auto")
    parser.add_argument("--camera-params", type=parse_camera_params)
    parser.add_argument("--ground-truth", type=Path)
    parser.add_argument("--skip-sift", action="store_true")
    parser.add_argument("--skip-d2", action="store_true")
    parser.add_argument("--label", default="", help="suffix for the row labels, e.g. ' (known K)'")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    camera = (CameraConfig(mode=args.camera_mode, params=tuple(args.camera_params))
              if args.camera_params else CameraConfig(mode=args.camera_mode))
    ground_truth = read_ground_truth_file(args.ground_truth, list_images(args.images)) if args.ground_truth else None
    results = {}
    if not args.skip_sift:
        logger.info("SIFT (pycolmap) on %s", args.images)
        results["SIFT (pycolmap)"] = sift_reconstruction(args.images, args.output / "sift", args.max_edge, camera,
                                                         ground_truth)
    if not args.skip_d2:
        from d2_sfm import reconstruct
        extraction = reconstruct.ExtractionConfig(multiscale=args.multiscale, max_edge=args.max_edge)
        config = reconstruct.ReconstructionConfig(weights=args.weights, extraction=extraction, camera=camera)
        logger.info("D2 (d2_sfm) on %s", args.images)
        results["D2 (d2_sfm)"] = d2_reconstruction(args.images, args.output / "d2", config, ground_truth)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "comparison.json").write_text(json.dumps(results, indent=1, default=str))
    print(HEADER)
    for label, data in results.items():
        print(row(label + args.label, data))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
