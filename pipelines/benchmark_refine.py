"""What keypoint refinement and the featuremetric bundle adjustment add to `reconstruct`'s wall time,
with their accuracy in the same run.

  python pipelines/benchmark_refine.py --output /tmp/bench_refine [--images DIR] \
      [--modes none,keypoints+bundle] [--mapper incremental|global] [--max-edge 1024] [--device cpu] \
      [--profile]

Each mode is one whole `python -m d2_sfm.reconstruct --overwrite` process (wall time measured around
it), run as this script's child so that the refine step's sub-timings (RefineSummary.timings) and
the CPU seconds of the whole process, the refine step and the bundle adjustment are recorded too
(CPU time: a share less sensitive to a loaded machine); the bundle adjustment's sub-timings come
from summary.json. Without --images the embedded sample scene is reconstructed (generated in
OUT/datasets/sample_scene) and its ground-truth rotation errors are printed. --profile writes
OUT/<mode>.prof (cProfile) and prints the refinement's top functions. Prints one Markdown table:
wall, refine and bundle seconds with their share of the first mode's wall, the sub-timings,
registered views, points, mean reprojection error and rotation errors. Compare times only within
one run (the machine's load changes between runs); the sample scene's rotation errors move by a
few hundredths of a degree with any change of the tracks (e.g. the epipolar RANSAC's seed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CHILD_FLAG = "--child-timings"  # internal: run reconstruct in this process, writing the refine step's timings


def child(timings_path: Path, argv: list[str]) -> int:
    """reconstruct's CLI, with the refine step's sub-timings and the CPU seconds of the refine step
    and of the bundle adjustment written to `timings_path` (CPU time: robust to a loaded machine)."""
    from d2_sfm.cli import run_cli
    from d2_sfm.reconstruct import cli
    from d2_sfm.reconstruction import pipeline
    from d2_sfm.refinement import features_file

    record: dict[str, float] = {}
    refine, bundle = features_file.refine_features_file, pipeline.adjust_reconstruction

    def refine_recorded(*args, **kwargs):
        start = time.process_time()
        summary = refine(*args, **kwargs)
        record.update({"refine_cpu": time.process_time() - start, **summary.timings})
        timings_path.write_text(json.dumps(record))
        return summary

    def bundle_recorded(*args, **kwargs):
        start = time.process_time()
        report = bundle(*args, **kwargs)
        record["bundle_cpu"] = time.process_time() - start
        timings_path.write_text(json.dumps(record))
        return report

    features_file.refine_features_file, pipeline.adjust_reconstruction = refine_recorded, bundle_recorded
    code = run_cli(cli, argv)
    record["total_cpu"] = time.process_time()
    timings_path.write_text(json.dumps(record))
    return code


def run_mode(images: Path | None, output: Path, mode: str, mapper: str, max_edge: int, device: str,
             profile: bool) -> dict[str, object]:
    """One whole reconstruct process: its summary.json, the refine sub-timings and the wall time."""
    run_dir = output / mode.replace("+", "_")
    timings_path = output / f"{run_dir.name}.refine.json"
    timings_path.unlink(missing_ok=True)
    arguments = ["--output", str(run_dir), "--overwrite", "--max-edge", str(max_edge), "--refine", mode,
                 "--mapper", mapper, "--device", device] + (["--images", str(images)] if images else [])
    launcher = [sys.executable] + (["-m", "cProfile", "-o", str(output / f"{run_dir.name}.prof")] if profile else [])
    command = launcher + [str(Path(__file__).resolve()), CHILD_FLAG, str(timings_path), *arguments]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.time()
    result = subprocess.run(command, cwd=output, env=env, capture_output=True, text=True)
    wall = time.time() - start
    (output / f"{run_dir.name}.log").write_text(result.stdout + result.stderr)
    summary_path = run_dir / "summary.json"
    if result.returncode not in (0, 3) or not summary_path.is_file():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"wall": wall, "failed": f"exit {result.returncode}: {tail}"}
    refine = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    return {**json.loads(summary_path.read_text()), "wall": wall, "refine_timings": refine}


def seconds(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.2f}" for key, value in values.items()) or "-"


def rows(results: dict[str, dict[str, object]]) -> list[str]:
    first = next(iter(results.values()))
    baseline, baseline_cpu = first.get("wall"), first.get("refine_timings", {}).get("total_cpu")
    lines = ["| mode | wall (s) | refine (s) | bundle (s) | refine + bundle (% of first wall) | CPU (s) "
             "| refine + bundle CPU (% of first CPU) | refine sub-timings (s) | bundle sub-timings (s) | registered "
             "| points | mean reproj. (px) | GT rot. median / max (deg) | GT rel. rot. median / max (deg) |",
             "|" + "---|" * 14]
    for mode, data in results.items():
        if "failed" in data:
            lines.append(f"| {mode} | {data['wall']:.1f} | failed: {data['failed']} |" + " |" * 11)
            continue
        timings = data.get("timings") or {}
        refine, bundle = timings.get("refine", 0.0), timings.get("bundle", 0.0)
        share = f"{refine + bundle:.1f} ({100 * (refine + bundle) / baseline:.0f}%)" if baseline else "-"
        cpu = data.get("refine_timings", {})
        extra_cpu = cpu.get("refine_cpu", 0.0) + cpu.get("bundle_cpu", 0.0)
        cpu_share = f"{extra_cpu:.1f} ({100 * extra_cpu / baseline_cpu:.0f}%)" if baseline_cpu else "-"
        refine_parts = {k: v for k, v in cpu.items() if not k.endswith("_cpu")}
        bundle_parts = (data.get("bundle") or {}).get("timings") or {}
        truth = data.get("ground_truth") or {}
        absolute, relative = truth.get("rotation_error_deg"), truth.get("relative_rotation_error_deg")
        pair = lambda errors: f"{errors['median']:.4f} / {errors['max']:.4f}" if errors else "-"  # noqa: E731
        lines.append(f"| {mode} | {data['wall']:.1f} | {refine:.2f} | {bundle:.2f} | {share} "
                     f"| {cpu.get('total_cpu', float('nan')):.1f} | {cpu_share} | {seconds(refine_parts)} "
                     f"| {seconds(bundle_parts)} | {data['num_registered']}/{data['num_images']} "
                     f"| {data['num_points3D']} | {data['mean_reprojection_error']:.4f} | {pair(absolute)} "
                     f"| {pair(relative)} |")
    return lines


def profile_lines(path: Path, count: int = 25) -> str:
    import io
    import pstats

    stream = io.StringIO()
    pstats.Stats(str(path), stream=stream).sort_stats("cumulative").print_stats("refinement", count)
    return stream.getvalue()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
        return child(Path(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="scratch folder (one sub-folder per mode)")
    parser.add_argument("--images", type=Path, help="image folder (default: the embedded sample scene)")
    parser.add_argument("--modes", default="none,keypoints+bundle", help="refine modes, comma-separated; "
                        "the first one's wall is the reference of the share column")
    parser.add_argument("--mapper", default="incremental", choices=("incremental", "global"))
    parser.add_argument("--max-edge", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="cProfile each run; print the refinement's top")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    images = args.images.resolve() if args.images else None
    results = {}
    for mode in args.modes.split(","):
        results[mode] = run_mode(images, args.output.resolve(), mode, args.mapper, args.max_edge, args.device,
                                 args.profile)
        print(f"{mode}: wall {results[mode]['wall']:.1f} s", flush=True)
    print(f"\n{images or 'sample scene'} ({args.mapper} mapper, --max-edge {args.max_edge}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')})\n")
    print("\n".join(rows(results)))
    if args.profile:
        for mode in results:
            path = args.output / f"{mode.replace('+', '_')}.prof"
            if mode != "none" and path.is_file():
                print(f"\n{mode}:\n{profile_lines(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
