"""What a finished reconstruction reports: the model's statistics, pose errors against reference
poses, pair counts, and the lines printed at the end (summary.json holds them all)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..alignment import PoseErrors, align_and_compare, model_poses, relative_rotation_errors
from ..colmap import pycolmap
from ..colmap_import import PairStats
from ..h5io import file_attributes


def model_statistics(reconstruction: pycolmap.Reconstruction) -> dict[str, object]:
    registered = sorted(im.name for im in reconstruction.images.values() if im.has_pose)
    return {
        "num_registered": len(registered),
        "num_points3D": reconstruction.num_points3D(),
        "num_observations": reconstruction.compute_num_observations(),
        "mean_track_length": reconstruction.compute_mean_track_length(),
        "mean_observations_per_image": reconstruction.compute_mean_observations_per_reg_image(),
        "mean_reprojection_error": reconstruction.compute_mean_reprojection_error(),
        "registered": registered,
        "cameras": [{"camera_id": cid, "model": cam.model.name, "width": cam.width, "height": cam.height,
                     "params": [float(v) for v in cam.params]} for cid, cam in reconstruction.cameras.items()],
    }


def ground_truth_report(reconstruction: pycolmap.Reconstruction, ground_truth: dict[str, pycolmap.Rigid3d]
                        ) -> tuple[dict[str, object], PoseErrors]:
    estimated = model_poses(reconstruction)
    errors = align_and_compare(estimated, ground_truth)
    relative = relative_rotation_errors(estimated, ground_truth)
    report = errors.as_dict()
    report["relative_rotation_error_deg"] = {
        "median": float(np.median(relative)) if len(relative) else None,
        "max": float(relative.max()) if len(relative) else None, "num_pairs": int(len(relative))}
    report["num_ground_truth"] = len(ground_truth)
    return report, errors


@dataclass
class ReconstructionSummary:
    output: Path
    data: dict[str, object]
    reconstruction: pycolmap.Reconstruction | None = None

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    def lines(self) -> list[str]:
        d = self.data
        lines = [f"{d['num_registered']}/{d['num_images']} images registered, {d['num_points3D']} points, "
                 f"mean track length {d['mean_track_length']:.2f}, mean reprojection error "
                 f"{d['mean_reprojection_error']:.2f} px -> {str(d['status']).upper()}"]
        lines += [f"  warning: {w}" for w in d.get("warnings", [])]
        if d.get("failed_images"):
            lines.append(f"  unreadable images skipped: {', '.join(sorted(d['failed_images']))}")
        if d.get("skipped_files"):
            lines.append(f"  files skipped when listing the folder: {', '.join(sorted(d['skipped_files']))}")
        if d.get("feature_warnings"):
            lines.append(f"  suspect features (see summary.json): {', '.join(sorted(d['feature_warnings']))}")
        if d.get("unregistered"):
            lines.append(f"  not registered: {', '.join(d['unregistered'])}")
        gt = d.get("ground_truth")
        if gt and gt.get("num_aligned"):
            lines.append(f"  pose error vs ground truth after Sim3 alignment ({gt['num_aligned']} views): rotation "
                         f"median {gt['rotation_error_deg']['median']:.2f} deg, "
                         f"max {gt['rotation_error_deg']['max']:.2f} "
                         f"deg; camera centre max {100 * gt['max_centre_error_fraction_of_scene']:.2f}% of scene size")
        if gt and gt.get("relative_rotation_error_deg", {}).get("num_pairs"):
            rel = gt["relative_rotation_error_deg"]
            lines.append(f"  relative rotation error vs ground truth ({rel['num_pairs']} pairs): median "
                         f"{rel['median']:.2f} deg, max {rel['max']:.2f} deg")
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in d["timings"].items())
        lines.append(f"  timings: {timings}")
        lines.append(f"  outputs in {self.output}: sfm/ (COLMAP binary), points.ply, summary.json, overview.png")
        return lines


def pair_counts(stats: list[PairStats]) -> dict[str, int]:
    return {"matched": len(stats), "verified": sum(s.num_inliers > 0 for s in stats),
            "kept": sum(s.kept for s in stats), "rejected_weak": sum(s.num_inliers > 0 and not s.kept for s in stats)}


def features_weights(features: Path) -> dict[str, str]:
    """The weights recorded in a features file (for runs whose extract step did not record them)."""
    attributes = file_attributes(features)
    return {"name": str(attributes.get("weights", "")), "sha256": str(attributes.get("weights_sha256", ""))}


def too_few_images_message(image_dir: Path, listed: list[str], usable: list[str], failed: dict[str, str]) -> str:
    reasons = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
    if len(listed) < 2:
        return (f"{image_dir} holds a single image ({', '.join(listed)}); Structure-from-Motion needs at "
                "least 2 overlapping images")
    return f"only {len(usable)} of {len(listed)} images in {image_dir} could be read ({reasons}); at least 2 are needed"


def no_pairs_message(stats: list[PairStats], pair_stats: Path) -> str:
    best = max(stats, key=lambda s: s.num_inliers, default=None)
    detail = (f"; the best pair ({best.name0}, {best.name1}) has {best.num_matches} matches and {best.num_inliers} "
              f"verified inliers ({best.reason})" if best else "")
    return (f"no image pair survived geometric verification ({len(stats)} pairs tried{detail}): the images seem "
            f"to share no common view. Per-pair numbers: {pair_stats}")
