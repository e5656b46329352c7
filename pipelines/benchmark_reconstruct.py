"""D2 reconstruction against COLMAP's SIFT pipeline on the same images: whole processes, per step and total.

  python pipelines/benchmark_reconstruct.py --output OUT [--data ../shared/data]
      [--sets kermit sceaux temple sample] [--repeats 1] [--variants "" "--precision bf16"]
      [--resume-variants] [--skip-sift]

Per set, in one run:
- D2: `python -m d2_sfm.reconstruct --images DIR --output OUT/<set>/run<r>/d2-<k>` with default
  settings plus the options of variant k (`--variants`, one string each; "" is the defaults), and
  --ground-truth where the set has one, from an empty folder. With --resume-variants, variants
  after the first start from a copy of the first's output, so the resume logic redoes only the
  steps their options change (their process times then cover those steps only).
- SIFT: a fresh process running `compare_sift.run_sift` (pycolmap extract_features, match_exhaustive,
  incremental_mapping; nothing but pycolmap and d2_sfm's shared layers imported).
Both are timed as whole processes (start-up and imports included) and by their own step timers.
Within a repeat the pipelines run back to back, SIFT first on even repeats and last on odd ones, so
machine load hits both alike; the load average is printed with the tables. Only ratios inside
one run mean anything.

Sets: kermit (../shared/data/sfm/kermit, 11 images of 640x480, as they are; Bundler's relative
rotations as reference), sceaux (11 images of 2832x2128 resized once, with their EXIF, into
OUT/images/sceaux with a 1024 px longer side; no reference), temple (16 images of 640x480,
Middlebury poses), sample (d2_sfm's embedded scene, rendered into OUT/images/sample; its poses).
The shared data is only read. A third table compares each variant's keypoints with the first
variant's: the share of the first's keypoints with one of the variant's within 1 px (the
criterion of `--precision auto`: >= 99% for bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "pipelines"))

# name: (folder under --data or None for the sample scene, longest side, ground truth inside the folder)
SETS = {"kermit": ("sfm/kermit", 640, "results.example/bundle.out"),
        "sceaux": ("sfm/sceaux_castle/images", 1024, None),
        "temple": ("sfm/temple_sparse_ring", 640, "templeSR_par.txt"),
        "sample": (None, 640, "ground_truth.txt")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def prepared_images(data: Path, name: str, output: Path) -> tuple[Path, int, Path | None]:
    """The set's image folder (resized into OUT/images/<name> once when larger than its size),
    its longest side and its ground-truth file."""
    folder, max_edge, truth = SETS[name]
    if folder is None:
        from d2_sfm.datasets.sample_scene import IMAGE_DIR, write_sample_scene
        root = write_sample_scene(output / "images" / name)
        return root / IMAGE_DIR, max_edge, root / truth
    source = data / folder
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"{source}: no images (is --data right?)")
    truth_path = source / truth if truth else None
    from PIL import Image
    with Image.open(files[0]) as image:
        if max(image.size) <= max_edge:
            return source, max_edge, truth_path
    target = output / "images" / name
    if not (target.is_dir() and len(list(target.iterdir())) == len(files)):
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            with Image.open(path) as image:
                scale = max_edge / max(image.size)
                size = (round(image.width * scale), round(image.height * scale))
                exif = image.info.get("exif", b"")  # EXIF focal length: the camera prior of both pipelines
                image.convert("RGB").resize(size, Image.LANCZOS).save(target / path.name, quality=95, exif=exif)
    return target, max_edge, truth_path


def run_process(command: list[str], log: Path) -> tuple[float, int]:
    """Wall seconds and exit code of `command`, its output in `log`."""
    start = time.time()
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.time() - start, code


def run_d2(images: Path, output: Path, options: list[str], truth: Path | None, start_from: Path | None
           ) -> dict[str, object]:
    shutil.rmtree(output, ignore_errors=True)
    if start_from is not None:
        shutil.copytree(start_from, output)
    output.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "d2_sfm.reconstruct", "--images", str(images), "--output", str(output)]
    command += ["--ground-truth", str(truth)] if truth else []
    wall, code = run_process(command + options, output.with_suffix(".log"))
    summary_path = output / "summary.json"
    if code not in (0, 3) or not summary_path.is_file():
        return {"wall": wall, "exit": code, "status": f"failed (exit {code}, see {output.with_suffix('.log')})"}
    summary = json.loads(summary_path.read_text())
    truth_errors = summary.get("ground_truth") or {}
    pairs = [p for p in json.loads((output / "database.pairs.json").read_text())]
    return {"wall": wall, "exit": code, "status": summary["status"], "registered": summary["num_registered"],
            "num_images": summary["num_images"], "reprojection_error": summary["mean_reprojection_error"],
            "relative_rotation_deg": truth_errors.get("relative_rotation_error_deg"),
            "rotation_deg": truth_errors.get("rotation_error_deg"),
            "pairs": {**summary["pairs"], "verified_twice": sum(p.get("verified_twice", False) for p in pairs)},
            "steps": summary["timings"], "settings": {"extraction": summary["settings"]["extraction"],
                                                      "verification": summary["settings"]["verification"]}}


def run_sift(images: Path, output: Path, max_edge: int) -> dict[str, object]:
    wall, code = run_process([sys.executable, __file__, "--sift-worker", "--images", str(images),
                              "--output", str(output), "--max-edge", str(max_edge)],
                             output.with_suffix(".log"))
    result = output / "sift.json"
    if code != 0 or not result.is_file():
        return {"wall": wall, "exit": code, "status": f"failed (exit {code}, see {output.with_suffix('.log')})"}
    return {"wall": wall, "exit": code, **json.loads(result.read_text())}


def sift_worker(images: Path, output: Path, max_edge: int) -> int:
    """The SIFT process: compare_sift.run_sift, then its numbers in OUT/sift.json."""
    from compare_sift import run_sift as compare_sift_run
    from d2_sfm.colmap_cameras import CameraConfig
    best, data = compare_sift_run(images, output, max_edge, CameraConfig())
    registered = best.num_reg_images() if best is not None else 0
    error = best.compute_mean_reprojection_error() if best is not None else None
    (output / "sift.json").write_text(json.dumps({
        "status": "ok" if registered else "no model", "registered": registered, "num_images": data["num_images"],
        "reprojection_error": error, "steps": data["timings"]}))
    return 0


def keypoint_agreement(reference: Path, other: Path) -> float | None:
    """Share of `reference`'s keypoints (all images) with one of `other`'s within 1 px."""
    from scipy.spatial import cKDTree
    from d2_sfm.h5io import list_h5_names, open_h5, read_keypoints
    if not (reference.is_file() and other.is_file()) or reference.resolve() == other.resolve():
        return None
    close = total = 0
    with open_h5(reference, "features") as ref, open_h5(other, "features") as oth:
        for name in list_h5_names(reference):
            points, candidates = read_keypoints(ref, name), read_keypoints(oth, name)
            distance, _ = cKDTree(candidates).query(points)
            close += int((distance <= 1.0).sum())
            total += len(points)
    return close / total if total else None


def cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| set | pipeline | registered | status | reproj. (px) | rel. rot. median / max (deg) | abs. rot. "
             "median (deg) | pairs kept (2nd pass) | process (s) | steps total (s) | per step (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        result = row["result"]
        steps = result.get("steps", {})
        relative, absolute = result.get("relative_rotation_deg") or {}, result.get("rotation_deg") or {}
        pairs = result.get("pairs")
        lines.append(" | ".join([
            f"| {row['set']}", row["pipeline"], f"{result.get('registered', 0)}/{result.get('num_images', '?')}",
            str(result["status"]), cell(result.get("reprojection_error")),
            f"{cell(relative.get('median'))} / {cell(relative.get('max'))}", cell(absolute.get("median")),
            f"{pairs['kept']}/{pairs['matched']} ({pairs['verified_twice']})" if pairs else "-",
            f"{result['wall']:.1f}", cell(steps.get("total"), 1),
            ", ".join(f"{k} {v:.1f}" for k, v in steps.items() if k != "total")]) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, object]]) -> str:
    lines = ["| set | repeat | D2 variant | D2/SIFT process | D2/SIFT steps total | D2 extract share |",
             "|---|---|---|---|---|---|"]
    sift = {(r["set"], r["repeat"]): r["result"] for r in rows if r["pipeline"] == "SIFT"}
    for row in rows:
        d2, base = row["result"], sift.get((row["set"], row["repeat"]))
        if row["pipeline"] == "SIFT" or base is None or "steps" not in d2 or "steps" not in base:
            continue
        share = d2["steps"].get("extract", 0) / d2["steps"]["total"]
        lines.append(f"| {row['set']} | {row['repeat']} | {row['pipeline']} | {d2['wall'] / base['wall']:.2f} | "
                     f"{d2['steps']['total'] / base['steps']['total']:.2f} | {share:.0%} |")
    return "\n".join(lines)


def agreement_table(rows: list[dict[str, object]]) -> str:
    lines = ["| set | repeat | D2 variant | keypoints within 1 px of the first variant's |", "|---|---|---|---|"]
    for row in rows:
        if row.get("keypoints_within_1px") is not None:
            lines.append(f"| {row['set']} | {row['repeat']} | {row['pipeline']} | {row['keypoints_within_1px']:.2%} |")
    return "\n".join(lines)


def run_set(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    images, max_edge, truth = prepared_images(args.data, name, args.output)
    rows = []
    for repeat in range(args.repeats):
        root = args.output / name / f"run{repeat}"
        root.mkdir(parents=True, exist_ok=True)
        first = root / "d2-0"
        runs = [] if args.skip_sift else [("SIFT", lambda: run_sift(images, root / "sift", max_edge), None)]
        for k, variant in enumerate(args.variants):
            label = f"D2 {variant}".strip()
            output = root / f"d2-{k}"
            runs.append((label, lambda output=output, variant=variant, k=k: run_d2(
                images, output, shlex.split(variant), truth, first if k and args.resume_variants else None),
                         output))
        if repeat % 2:  # SIFT last; the variants keep their order (later ones start from the first's output)
            runs = runs[1:] + runs[:1] if not args.skip_sift else runs
        for pipeline, run, output in runs:
            print(f"{name} repeat {repeat}: {pipeline or 'D2'} ...", file=sys.stderr, flush=True)
            row = {"set": name, "repeat": repeat, "pipeline": pipeline, "result": run()}
            if output is not None and output != first:
                row["keypoints_within_1px"] = keypoint_agreement(first / "features.h5", output / "features.h5")
            rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", nargs="+", choices=tuple(SETS), default=["kermit", "sceaux"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="d2_sfm.reconstruct options, one string per D2 run, e.g. '' '--precision bf16'")
    parser.add_argument("--resume-variants", action="store_true",
                        help="variants after the first start from a copy of the first's output")
    parser.add_argument("--skip-sift", action="store_true")
    parser.add_argument("--sift-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-edge", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sift_worker:
        return sift_worker(args.images, args.output, args.max_edge)
    load_before = os.getloadavg()
    rows = [row for name in args.sets for row in run_set(name, args)]
    load_after = os.getloadavg()
    (args.output / "benchmark.json").write_text(json.dumps(
        {"rows": rows, "variants": args.variants, "load_before": load_before, "load_after": load_after}, indent=1))
    print(f"load average (1/5/15 min) before {tuple(round(v, 2) for v in load_before)}, "
          f"after {tuple(round(v, 2) for v in load_after)}; {os.cpu_count()} CPUs")
    print(table(rows))
    print()
    print(ratios(rows))
    if any(row.get("keypoints_within_1px") is not None for row in rows):
        print()
        print(agreement_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
