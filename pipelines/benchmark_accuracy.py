"""Accuracy of D2 reconstructions and localization with and without keypoint refinement, beside
pycolmap's SIFT pipeline, in one run.

  python pipelines/benchmark_accuracy.py --output /tmp/acc [--data ../shared/data] \
      [--sets kermit,sceaux,sample,temple,aachen,inloc] [--refine none,keypoints,keypoints+bundle[+intrinsics]] \
      [--mappers incremental,global] [--skip-sift] [--device cpu] \
      [--synthetic-db 12] [--synthetic-queries 6] [--synthetic-size 640x480] [--synthetic-seed 0] \
      [--sample-seed 0]

Each D2 row is one whole `python -m d2_sfm.reconstruct ... --refine X --mapper M` process (wall
time measured around it); SIFT rows come from pipelines/compare_sift.py (pycolmap extract_features,
match_exhaustive, incremental_mapping). Sets: kermit (11 views, 640 px), Sceaux (11 views, resized
to <= 1024 px into OUT/images/sceaux, never touching the data folder), the embedded sample scene
(generated in OUT/sample; Sim3-aligned rotation errors against its known poses) and Middlebury
templeSparseRing (known intrinsics from templeSR_par.txt, rotation errors against its poses).
Prints one Markdown table: registered views, points, mean reprojection error, rotation errors,
wall time and the time the refine step and the bundle adjustment took (with the run's extra wall time
against the first mapper's run with --refine none).

Sets aachen and inloc are the synthetic look-alikes of Aachen Day-Night v1.1 and InLoc
(d2_sfm.datasets.synthetic, generated in OUT/<set>/dataset; --synthetic-* set their size and
seed), localized by one whole `python -m d2_sfm.localize --refine X` process per mode (retrieval:
the datasets' ground-truth covisibility pairs, 10 per query). A second table gives the median
position and rotation errors, the recall at hloc's Aachen thresholds (0.25 m, 2 deg) / (0.5 m,
5 deg) / (5 m, 10 deg) for both sets, and the time the refinement took (database keypoints before
triangulation, plus keypoints+bundle's adjustment of the triangulated points, + query keypoints
before PnP) against the whole run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "pipelines"))

from d2_sfm.cli import run_cli  # noqa: E402
from d2_sfm.errors import D2SfmError  # noqa: E402

logger = logging.getLogger("benchmark_accuracy")
SETS = ("kermit", "sceaux", "sample", "temple", "aachen", "inloc")
SYNTHETIC = {"aachen": "aachen_v1_1", "inloc": "inloc"}  # set -> synthetic layout (and localize --dataset)
LOCALIZATION_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))  # hloc's Aachen (m, deg)
NUM_RETRIEVED = 10
MAX_EDGE = 1024
INTRINSICS_SUFFIX = "+intrinsics"  # refine mode keypoints+bundle+intrinsics: reconstruct --bundle-intrinsics


def prepare(name: str, data: Path, output: Path, sample_seed: int = 0) -> tuple[Path | None, list[str]]:
    """(image folder, extra reconstruct arguments) of a set; None folder: the generated sample scene
    (another `sample_seed` renders another scene of the same kind into OUT/sample_seed<N>)."""
    sfm = data / "sfm"
    if name == "kermit":
        return sfm / "kermit", []
    if name == "sceaux":
        return resized_copy(sfm / "sceaux_castle" / "images", output / "images" / "sceaux", MAX_EDGE), []
    if name == "temple":
        par = sfm / "temple_sparse_ring" / "templeSR_par.txt"
        k = np.array(par.read_text().split("\n")[1].split()[1:10], float).reshape(3, 3)
        params = f"{k[0, 0]},{k[1, 1]},{k[0, 2]},{k[1, 2]}"
        return sfm / "temple_sparse_ring", ["--camera-params", params, "--ground-truth", str(par)]
    if name == "sample" and sample_seed:
        from d2_sfm.datasets.sample_scene import GROUND_TRUTH_FILE, IMAGE_DIR, write_sample_scene

        root = write_sample_scene(output / f"sample_seed{sample_seed}", seed=sample_seed)
        return root / IMAGE_DIR, ["--ground-truth", str(root / GROUND_TRUTH_FILE)]
    if name == "sample":
        return None, []
    raise D2SfmError(f"unknown set {name!r}: expected some of {', '.join(SETS)}")


def resized_copy(source: Path, target: Path, max_edge: int) -> Path:
    """JPEG/PNG images of `source` shrunk to <= max_edge px into `target` (made once)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or (target / path.name).exists():
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        scale = max_edge / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(target / path.name), image)
    return target


def run_d2(images: Path | None, extra: list[str], output: Path, refine: str, mapper: str, device: str,
           cwd: Path) -> dict[str, object]:
    """One whole reconstruct process; its summary.json plus the wall time."""
    command = [sys.executable, "-m", "d2_sfm.reconstruct", "--output", str(output), "--overwrite",
               "--max-edge", str(MAX_EDGE), "--refine", refine.removesuffix(INTRINSICS_SUFFIX), "--mapper", mapper,
               "--device", device, *extra, *(["--bundle-intrinsics"] if refine.endswith(INTRINSICS_SUFFIX) else [])]
    if images is not None:
        command += ["--images", str(images)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    (output.parent / f"{output.name}.log").write_text(result.stdout + result.stderr)
    summary_path = output / "summary.json"
    if result.returncode not in (0, 3) or not summary_path.is_file():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning("reconstruct failed (exit %d) for %s: %s", result.returncode, output, tail)
        return {"wall": wall, "failed": tail}
    return {**json.loads(summary_path.read_text()), "wall": wall}


def run_sift(images: Path | None, extra: list[str], output: Path, cwd: Path) -> dict[str, object]:
    """pycolmap's SIFT pipeline (compare_sift) with the same camera settings and ground truth."""
    from compare_sift import sift_reconstruction
    from d2_sfm.alignment import read_ground_truth_file
    from d2_sfm.colmap_cameras import CameraConfig
    from d2_sfm.images import list_images
    from d2_sfm.reconstruct import SAMPLE_SCENE_DIR, sample_scene

    camera, ground_truth = CameraConfig(), None
    if images is None:  # the sample scene, generated by the D2 runs in cwd (or now)
        images, ground_truth = sample_scene(cwd / SAMPLE_SCENE_DIR)
    if "--camera-params" in extra:
        camera = CameraConfig(params=tuple(float(v) for v in extra[extra.index("--camera-params") + 1].split(",")))
    if "--ground-truth" in extra:
        ground_truth = read_ground_truth_file(Path(extra[extra.index("--ground-truth") + 1]), list_images(images))
    start = time.time()
    data = sift_reconstruction(images, output, MAX_EDGE, camera, ground_truth)
    return {**data, "wall": time.time() - start}


def largest_model_poses(folder: Path) -> dict:
    """Poses of the model with the most registered images among `folder` and its subfolders."""
    from d2_sfm.alignment import model_poses
    from d2_sfm.colmap import pycolmap

    found = [d for d in [folder, *sorted(p for p in folder.glob("*") if p.is_dir())] if (d / "images.bin").is_file()]
    models = [pycolmap.Reconstruction(str(d)) for d in found]
    return model_poses(max(models, key=lambda m: m.num_reg_images())) if models else {}


def rotations_against_sift(d2_runs: dict[str, Path], sift_models: Path) -> list[str]:
    """Relative rotation errors of each D2 model against COLMAP SIFT's, for sets without ground-truth
    poses (SIFT's reprojection error is 0.2-0.4 px here: a stand-in reference, not the truth)."""
    from d2_sfm.alignment import relative_rotation_errors

    reference = largest_model_poses(sift_models)
    rows = []
    for label, sfm in d2_runs.items():
        errors = relative_rotation_errors(largest_model_poses(sfm), reference) if reference else np.zeros(0)
        cells = (f"{np.median(errors):.3f} / {errors.max():.3f}", str(len(errors))) if len(errors) else ("-", "0")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return rows


SIFT_REFERENCE_HEADER = ("| set / pipeline | rel. rot. err against COLMAP SIFT's model, median / max (deg) "
                         "| image pairs |\n|---|---|---|")


def row(label: str, data: dict[str, object], baseline_wall: float | None) -> str:
    if "failed" in data:
        return f"| {label} | failed: {data['failed']} |" + " |" * 9
    gt = data.get("ground_truth") or {}
    rot = gt.get("rotation_error_deg") or {}
    rel = gt.get("relative_rotation_error_deg") or {}
    timings = data.get("timings") or {}
    refine_time = timings.get("refine")
    if refine_time is not None and "bundle" in timings:
        refine_time += timings["bundle"]
    share = (f"{refine_time:.1f} ({100 * (data['wall'] - baseline_wall) / baseline_wall:+.0f}% wall)"
             if refine_time is not None and baseline_wall else "-")
    registered = data.get("num_registered", 0)
    total = data.get("num_images") or len(data.get("images", [])) or "?"
    cells = [label, f"{registered}/{total}", str(data.get("num_points3D", "-")),
             f"{data.get('mean_reprojection_error', float('nan')):.3f}",
             f"{rot['median']:.3f} / {rot['max']:.3f}" if rot.get("median") is not None else "-",
             f"{rel['median']:.3f} / {rel['max']:.3f}" if rel.get("median") is not None else "-",
             f"{timings.get('map', float('nan')):.1f}", share, f"{data['wall']:.1f}", focal_cell(data)]
    return "| " + " | ".join(cells) + " |"


def focal_cell(data: dict[str, object]) -> str:
    """The largest sigma_f / f over the self-calibrated cameras (the reliability check's input), %."""
    values = [v for v in (data.get("focal_uncertainty") or {}).values() if v is not None]
    return f"{100 * max(values):.2f}" if values else "-"


HEADER = ("| set / pipeline | registered | points | mean reproj. err (px) | rot. err median / max (deg, Sim3) "
          "| rel. rot. err median / max (deg) | map (s) | refine + bundle (s, share of wall) | wall (s) "
          "| focal sigma (%) |\n|---|---|---|---|---|---|---|---|---|---|")


def run_localize(layout: str, root: Path, output: Path, refine: str, device: str, cwd: Path) -> dict[str, object]:
    """One whole localize process from scratch; its summary.json plus the wall time."""
    shutil.rmtree(output, ignore_errors=True)
    pairs = next((root / "pairs").glob("pairs-query-gt-covis*.txt"))
    command = [sys.executable, "-m", "d2_sfm.localize", "--dataset", layout, "--root", str(root), "--output",
               str(output), "--pairs", str(pairs), "--num-retrieved", str(NUM_RETRIEVED), "--max-edge",
               str(MAX_EDGE), "--refine", refine, "--device", device]
    start = time.time()
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True)
    wall = time.time() - start
    (output.parent / f"{output.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not (output / "summary.json").is_file():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning("localize failed (exit %d) for %s: %s", result.returncode, output, tail)
        return {"wall": wall, "failed": tail}
    return {**json.loads((output / "summary.json").read_text()), "wall": wall}


def localization_row(label: str, data: dict[str, object]) -> str:
    if "failed" in data:
        return f"| {label} | failed: {data['failed']} |" + " |" * 5
    errors = np.array([[e["position"], e["rotation_deg"]] for e in data["evaluation"]["errors"].values()], float)
    errors = np.nan_to_num(errors, nan=np.inf)  # a query without an estimate misses every threshold
    recall = [100 * np.mean((errors[:, 0] <= m) & (errors[:, 1] <= d)) for m, d in LOCALIZATION_THRESHOLDS]
    timings = data["timings_s"]
    database = timings.get("refine_db", 0.0) + timings.get("bundle_db", 0.0)
    refine = database + timings.get("refine_queries", 0.0)
    refine_cell = (f"{refine:.1f} ({database:.1f} + {timings.get('refine_queries', 0.0):.1f}; "
                   f"{100 * refine / data['wall']:.0f}% of wall)" if "refine_queries" in timings else "-")
    method = data["settings"]["refine"].get("method")  # the refine step's method, when it has several
    label += f" ({method})" if method and data["settings"]["refine"]["mode"] != "none" else ""
    cells = [label, f"{data['num_localized']}/{data['num_queries']}",
             f"{np.median(errors[:, 0]):.4f} / {np.median(errors[:, 1]):.3f}",
             " / ".join(f"{r:.0f}" for r in recall), refine_cell, f"{data['wall']:.1f}"]
    return "| " + " | ".join(cells) + " |"


LOCALIZATION_HEADER = (
    "| synthetic set / pipeline | localized | median error (m / deg) | recall % (0.25 m, 2 deg) / (0.5 m, 5 deg) / "
    "(5 m, 10 deg) | refine (s: db + queries; share of wall) | wall (s) |\n|---|---|---|---|---|---|")


def localization_rows(name: str, output: Path, refines: list[str], device: str, num_db: int, num_queries: int,
                      size: tuple[int, int], seed: int, results: dict[str, object]) -> list[str]:
    """The synthetic dataset of a set (made once), localized once per refine mode."""
    from d2_sfm.datasets import synthetic

    layout, cwd = SYNTHETIC[name], output / name
    root = cwd / "dataset"
    synthetic.main(layout, root, seed, num_db, num_queries, overwrite=True, image_size=size)  # as asked, always
    rows = []
    for refine in (mode for mode in refines if not mode.endswith(INTRINSICS_SUFFIX)):  # reconstruct only
        label = f"{name} ({layout}, {num_db} db, {num_queries} queries, seed {seed}) D2 refine={refine}"
        logger.info("%s", label)
        results[label] = run_localize(layout, root, cwd / f"d2_{refine}", refine, device, cwd)
        rows.append(localization_row(label, results[label]))
    return rows


def main(output: Path, data: Path, sets: list[str], refines: list[str], mappers: list[str], sift: bool,
         device: str, synthetic: tuple[int, int, tuple[int, int], int] = (12, 6, (640, 480), 0),
         sample_seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    unknown = [name for name in sets if name not in SETS]
    if unknown:
        raise D2SfmError(f"unknown set(s) {', '.join(unknown)}: expected some of {', '.join(SETS)}")
    if any(name not in SYNTHETIC for name in sets) and not (data / "sfm").is_dir():
        raise D2SfmError(f"real data folder {data / 'sfm'} does not exist")
    output.mkdir(parents=True, exist_ok=True)
    rows, localization, against_sift, results = [], [], [], {}
    for name in sets:
        if name in SYNTHETIC:
            localization += localization_rows(name, output, refines, device, *synthetic, results)
            continue
        images, extra = prepare(name, data, output, sample_seed)
        cwd = output / name
        cwd.mkdir(parents=True, exist_ok=True)
        baseline, d2_runs = None, {}
        for mapper in mappers:
            for refine in refines:
                label = f"{name} D2 {mapper} refine={refine}"
                logger.info("%s", label)
                result = run_d2(images, extra, cwd / f"d2_{mapper}_{refine}", refine, mapper, device, cwd)
                if mapper == mappers[0] and refine == "none":
                    baseline = result.get("wall")
                results[label] = result
                rows.append(row(label, result, baseline if refine != "none" else None))
                d2_runs[label] = cwd / f"d2_{mapper}_{refine}" / "sfm"
        if sift:
            label = f"{name} SIFT (pycolmap)"
            results[label] = run_sift(images, extra, cwd / "sift", cwd)
            rows.append(row(label, results[label], None))
            against_sift += rotations_against_sift(d2_runs, cwd / "sift" / "models")
    (output / "accuracy.json").write_text(json.dumps(results, indent=1, default=str))
    return rows, localization, against_sift


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="scratch folder for all runs")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--refine", default="none,keypoints,keypoints+bundle",
                        help="refine modes to run (comma-separated); keypoints+bundle+intrinsics: keypoints+bundle "
                             "with reconstruct --bundle-intrinsics (not for the localization sets)")
    parser.add_argument("--mappers", default="incremental", help="incremental and/or global (comma-separated)")
    parser.add_argument("--skip-sift", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic-db", type=int, default=12, help="aachen/inloc: database images (InLoc: "
                                                                       "rounded up to whole scans of 6 cutouts)")
    parser.add_argument("--synthetic-queries", type=int, default=6, help="aachen/inloc: queries")
    parser.add_argument("--synthetic-size", default="640x480", help="aachen/inloc: image size WxH")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="aachen/inloc: the datasets' seed")
    parser.add_argument("--sample-seed", type=int, default=0,
                        help="sample: render another scene of the embedded kind (0: the embedded scene itself)")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        size = tuple(int(v) for v in args.synthetic_size.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 2:
        raise D2SfmError(f"--synthetic-size must be WxH, e.g. 640x480, got {args.synthetic_size!r}")
    rows, localization, against_sift = main(args.output.resolve(), args.data.resolve(), args.sets.split(","),
                              args.refine.split(","), args.mappers.split(","), not args.skip_sift, args.device,
                              (args.synthetic_db, args.synthetic_queries, size, args.synthetic_seed),
                              args.sample_seed)
    if rows:
        print(HEADER)
        print("\n".join(rows))
    if against_sift:
        print(SIFT_REFERENCE_HEADER)
        print("\n".join(against_sift))
    if localization:
        print(LOCALIZATION_HEADER)
        print("\n".join(localization))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
