"""Pipeline step: share of queries localized within the benchmark's thresholds.

python -m d2_sfm.localization.evaluate --results RESULTS.txt --ground-truth GT.txt
                                       [--thresholds aachen|inloc] [--output EVAL.json]

Both files are in the results format (`name qw qx qy qz tx ty tz`, cam_from_world). A query of the
ground truth missing from the results counts as not localized. Errors: position = distance between
camera centres (metres), rotation = angle of R_est R_gt^T (degrees).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from ..atomic import write_json
from ..colmap import pycolmap
from ..alignment import centre, rotation_error_deg
from ..cli import run_cli
from ..datasets.formats import read_poses

logger = logging.getLogger(__name__)

Thresholds = tuple[tuple[float, float], ...]  # (metres, degrees), finest first
THRESHOLDS: dict[str, Thresholds] = {
    "aachen": ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0)),  # split day / night
    "inloc": ((0.25, 10.0), (0.5, 10.0), (1.0, 10.0)),  # split by building
}


def pose_errors(estimate: pycolmap.Rigid3d, truth: pycolmap.Rigid3d) -> tuple[float, float]:
    """(position error in world units, rotation error in degrees) of two cam_from_world poses."""
    return float(np.linalg.norm(centre(estimate) - centre(truth))), rotation_error_deg(estimate, truth)


def evaluate(estimates: Mapping[str, pycolmap.Rigid3d | None], truth: Mapping[str, pycolmap.Rigid3d],
             thresholds: Thresholds, groups: Mapping[str, str] | None = None) -> dict:
    """Recall at each threshold for all ground-truth queries and per group (name -> group name)."""
    errors = {}
    for name, pose in truth.items():
        estimate = estimates.get(name)
        errors[name] = pose_errors(estimate, pose) if estimate is not None else (np.inf, np.inf)
    members: dict[str, list[str]] = {"all": sorted(errors)}
    for name in sorted(errors):
        if groups and name in groups:
            members.setdefault(groups[name], []).append(name)
    report = {"thresholds": [list(t) for t in thresholds], "groups": {}, "errors": {
        n: {"position": e[0] if np.isfinite(e[0]) else None, "rotation_deg": e[1] if np.isfinite(e[1]) else None}
        for n, e in errors.items()}}
    for group, names in members.items():
        position = np.array([errors[n][0] for n in names])
        rotation = np.array([errors[n][1] for n in names])
        report["groups"][group] = {
            "num_queries": len(names),
            "recall": [float(np.mean((position <= m) & (rotation <= d))) for m, d in thresholds],
            "median_position_error": float(np.median(position)) if names else None,
            "median_rotation_error_deg": float(np.median(rotation)) if names else None,
        }
    return report


def format_report(report: dict) -> str:
    """One line per group: `day (824): 84.6 / 91.4 / 97.1 % at (0.25 m, 2°) / ...`."""
    thresholds = " / ".join(f"({m:g} m, {d:g}°)" for m, d in report["thresholds"])
    lines = []
    for group, stats in report["groups"].items():
        recall = " / ".join(f"{100 * r:.1f}" for r in stats["recall"])
        lines.append(f"{group} ({stats['num_queries']}): {recall} % at {thresholds}")
    return "\n".join(lines)


def main(results: Path, ground_truth: Path, thresholds: Thresholds = THRESHOLDS["aachen"],
         groups: Mapping[str, str] | None = None, output: Path | None = None) -> dict:
    report = evaluate(read_poses(results), read_poses(ground_truth), thresholds, groups)
    logger.info("Localization recall:\n%s", format_report(report))
    if output is not None:
        write_json(output, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.localization.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="results file to evaluate")
    parser.add_argument("--ground-truth", type=Path, required=True, help="ground truth, results format")
    parser.add_argument("--thresholds", choices=sorted(THRESHOLDS), default="aachen")
    parser.add_argument("--output", type=Path, help="write the report as JSON")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.results, args.ground_truth, THRESHOLDS[args.thresholds], output=args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
