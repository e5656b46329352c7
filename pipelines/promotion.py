"""The promotion rule for the offline default weights, measured in one run (CPU is enough).

  python pipelines/promotion.py --candidate runs/d2_sfm_v2/weights.pth [--incumbent hed_vgg16] \
      [--data ../shared/data] [--output outputs/promotion] [--parts homography,sfm,localization] [--no-sift]

New weights replace the incumbent (`hed_vgg16`) as the offline default only if all of these hold:
1. homography: MMA@3 strictly higher on every pair of pipelines/eval_homography.py (a pair where
   both score exactly 0 cannot be beaten by anyone and does not block; it is shown as such);
2. SfM on kermit (640 px), Sceaux (1024 px, known K) and temple (640 px, known K): at least as
   many registered views, and where ground truth exists (temple: Middlebury poses; kermit:
   Bundler's reference solution) a lower median relative-rotation error;
3. localization: at least as many synthetic Aachen v1.1 night queries within (5 m, 10 deg).
OpenCV SIFT (homography) and pycolmap SIFT (SfM) are printed beside them; SIFT has no
localization pipeline here (n/a). Prints a Markdown table and the verdict, writes
OUT/promotion.json. A part left out with --parts is reported as "not run" and the verdict says so.
Exit code 0 whatever the verdict (2 on bad input).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402,F401  (before pycolmap)

from d2_sfm.cli import run_cli  # noqa: E402
from d2_sfm.errors import D2SfmError  # noqa: E402

logger = logging.getLogger("d2_sfm.promotion")
PARTS = ("homography", "sfm", "localization")
NIGHT_THRESHOLD = 2  # index of (5 m, 10 deg) in the Aachen thresholds


@dataclass(frozen=True)
class Scene:
    name: str
    images: str  # below DATA/sfm
    max_edge: int
    camera_params: tuple[float, ...] | None  # known intrinsics (fx, fy, cx, cy) in original pixels
    ground_truth: str | None  # below the images folder


SCENES = (
    Scene("kermit", "kermit", 640, None, "results.example/bundle.out"),
    Scene("sceaux", "sceaux_castle/images", 1024, (2905.88, 2905.88, 1416.0, 1064.0), None),
    Scene("temple", "temple_sparse_ring", 640, (1520.4, 1525.9, 302.32, 246.87), "templeSR_par.txt"),
)


def homography_part(methods: dict[str, str], data: Path, sift: bool) -> dict[str, dict[str, float]]:
    """{method label: {pair: MMA@3}} on every pair of eval_homography."""
    import eval_homography

    results = eval_homography.main(list(methods.values()), sift, data / "homography", pairs="all")
    labels = list(methods) + (["sift"] if sift else [])
    return {label: {r.name: r.mma[2] for r in rows} for label, rows in zip(labels, results.values())}


def scene_ground_truth(scene: Scene, images: Path) -> dict | None:
    from d2_sfm.alignment import read_ground_truth_file
    from d2_sfm.images import list_images

    if scene.ground_truth is None or not (images / scene.ground_truth).is_file():
        return None
    return read_ground_truth_file(images / scene.ground_truth, list_images(images))


def sfm_numbers(data: dict) -> dict[str, object]:
    rel = ((data.get("ground_truth") or {}).get("relative_rotation_error_deg") or {})
    return {"registered": int(data.get("num_registered", 0)), "images": int(data.get("num_images", 0)),
            "rotation_median": rel.get("median"), "status": data.get("status", "-")}


def sfm_part(methods: dict[str, str], data: Path, output: Path, sift: bool) -> dict[str, dict[str, dict]]:
    """{method: {scene: {registered, images, rotation_median, status}}}."""
    import compare_sift

    from d2_sfm import reconstruct
    from d2_sfm.colmap_db import CameraConfig
    from d2_sfm.extractor import ExtractionConfig
    from d2_sfm.images import list_images

    results: dict[str, dict[str, dict]] = {label: {} for label in [*methods, *(["sift"] if sift else [])]}
    for scene in SCENES:
        images = data / "sfm" / scene.images
        if not images.is_dir():
            logger.warning("%s is missing: scene %s skipped", images, scene.name)
            continue
        truth = scene_ground_truth(scene, images)
        camera = CameraConfig(params=scene.camera_params) if scene.camera_params else CameraConfig()
        for label, weights in methods.items():
            config = reconstruct.ReconstructionConfig(weights=weights, camera=camera,
                                                      extraction=ExtractionConfig(max_edge=scene.max_edge))
            try:
                summary = reconstruct.main(images, output / "sfm" / scene.name / label, config, overwrite=True,
                                           ground_truth=truth)
                results[label][scene.name] = sfm_numbers({**summary.data, "status": summary.status})
            except D2SfmError as error:  # nothing could be built: zero registered, recorded
                logger.warning("%s on %s: %s", label, scene.name, error)
                results[label][scene.name] = {"registered": 0, "images": len(list_images(images)),
                                              "rotation_median": None, "status": "failed"}
            logger.info("%s %s: %s", label, scene.name, results[label][scene.name])
        if sift:
            sift_data = compare_sift.sift_reconstruction(images, output / "sfm" / scene.name / "sift",
                                                         scene.max_edge, camera, truth)
            results["sift"][scene.name] = sfm_numbers(sift_data)
    return results


def localization_part(methods: dict[str, str], output: Path) -> dict[str, dict[str, float]]:
    """{method: {night_localized, night_queries, day_localized, day_queries}} on synthetic Aachen v1.1."""
    from d2_sfm import localize
    from d2_sfm.datasets import synthetic
    from d2_sfm.extractor import ExtractionConfig

    root = synthetic.main("aachen_v1_1", output / "synthetic_aachen", seed=0, overwrite=True)
    results = {}
    for label, weights in methods.items():
        config = localize.LocalizationConfig(num_retrieved=10, extraction=ExtractionConfig(max_edge=640))
        run_dir = output / "localization" / label
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        result = localize.main("aachen_v1_1", root, run_dir, root / "pairs/pairs-query-gt-covis10.txt",
                               config, weights=weights)
        groups = json.loads((result.parent / "summary.json").read_text())["evaluation"]["groups"]
        entry = {}
        for group in ("night", "day"):
            stats = groups.get(group, {"num_queries": 0, "recall": [0, 0, 0]})
            entry[f"{group}_queries"] = stats["num_queries"]
            entry[f"{group}_localized"] = int(round(stats["recall"][NIGHT_THRESHOLD] * stats["num_queries"]))
            entry[f"{group}_finest"] = int(round(stats["recall"][0] * stats["num_queries"]))
        results[label] = entry
        logger.info("%s localization: %s", label, entry)
    return results


def verdict(results: dict, new: str, old: str) -> list[tuple[str, bool | None, str]]:
    """(criterion, passed (None: not run), detail) for each part of the rule."""
    checks: list[tuple[str, bool | None, str]] = []
    homography = results.get("homography")
    if homography:
        lost = [p for p, v in homography[new].items() if not (v > homography[old][p]
                                                                or v == homography[old][p] == 0.0)]
        checks.append(("MMA@3 higher on every homography pair", not lost,
                       "all pairs" if not lost else "not higher on " + ", ".join(lost)))
    else:
        checks.append(("MMA@3 higher on every homography pair", None, "not run"))
    sfm = results.get("sfm")
    if sfm:
        problems = []
        for scene, a in sfm[new].items():
            b = sfm[old].get(scene)
            if b is None:
                continue
            if a["registered"] < b["registered"]:
                problems.append(f"{scene}: {a['registered']} < {b['registered']} registered")
            if b["rotation_median"] is not None and (a["rotation_median"] is None
                                                     or a["rotation_median"] >= b["rotation_median"]):
                problems.append(f"{scene}: rotation error not lower")
        checks.append(("SfM registers at least as many views, lower rotation error", not problems,
                       "; ".join(problems) or "all scenes"))
    else:
        checks.append(("SfM registers at least as many views, lower rotation error", None, "not run"))
    localization = results.get("localization")
    if localization:
        a, b = localization[new]["night_localized"], localization[old]["night_localized"]
        checks.append(("at least as many night queries localized", a >= b, f"{a} vs {b}"))
    else:
        checks.append(("at least as many night queries localized", None, "not run"))
    return checks


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results: dict, labels: list[str], new: str, old: str) -> str:
    lines = ["| measure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    homography = results.get("homography") or {}
    if homography:
        for pair in homography[labels[0]]:
            lines.append(f"| MMA@3 {pair} | " + " | ".join(fmt(homography.get(m, {}).get(pair)) for m in labels) + " |")
    for scene in (results.get("sfm") or {}).get(labels[0], {}):
        cells = []
        for m in labels:
            r = (results.get("sfm") or {}).get(m, {}).get(scene)
            cells.append("-" if r is None else f"{r['registered']}/{r['images']} ({r['status']})")
        lines.append(f"| SfM {scene} registered | " + " | ".join(cells) + " |")
        cells = [fmt(((results.get("sfm") or {}).get(m, {}).get(scene) or {}).get("rotation_median")) for m in labels]
        lines.append(f"| SfM {scene} rel. rotation err. median (deg) | " + " | ".join(cells) + " |")
    localization = results.get("localization") or {}
    if localization:
        for group in ("night", "day"):
            cells = [(f"{localization[m].get(f'{group}_localized', '-')}/{localization[m].get(f'{group}_queries', '-')}"
                      if m in localization else "n/a") for m in labels]
            lines.append(f"| synthetic Aachen {group} within 5 m, 10 deg | " + " | ".join(cells) + " |")
    lines.append("")
    checks = verdict(results, new, old)
    for criterion, passed, detail in checks:
        mark = "not run" if passed is None else ("PASS" if passed else "FAIL")
        lines.append(f"- {criterion}: **{mark}** ({detail})")
    promoted = all(p is True for _, p, _ in checks)
    incomplete = any(p is None for _, p, _ in checks)
    lines.append("")
    lines.append(f"Verdict: **{'PROMOTE' if promoted else 'KEEP ' + old}**"
                 + (" (incomplete run: some parts not run)" if incomplete else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", required=True, help="weights name or checkpoint path of the new weights")
    parser.add_argument("--incumbent", default="hed_vgg16")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, default=Path("outputs/promotion"))
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    parser.add_argument("--no-sift", action="store_true", help="leave SIFT out")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise D2SfmError(f"unknown part(s) {', '.join(unknown)}: expected {', '.join(PARTS)}")
    if not args.data.is_dir() and set(parts) & {"homography", "sfm"}:
        raise D2SfmError(f"data folder {args.data} does not exist")
    candidate = args.candidate
    if not Path(candidate).is_file() and "/" in candidate:
        raise D2SfmError(f"candidate weights {candidate} do not exist")
    methods = {"candidate": candidate, "incumbent": args.incumbent}
    sift = not args.no_sift
    args.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"candidate": candidate, "incumbent": args.incumbent}
    if "homography" in parts:
        results["homography"] = homography_part(methods, args.data, sift)
    if "sfm" in parts:
        results["sfm"] = sfm_part(methods, args.data, args.output, sift)
    if "localization" in parts:
        results["localization"] = localization_part(methods, args.output)
    (args.output / "promotion.json").write_text(json.dumps(results, indent=1, default=str))
    labels = list(methods) + (["sift"] if sift else [])
    print(f"candidate = {candidate}, incumbent = {args.incumbent}\n")
    print(table(results, labels, "candidate", "incumbent"))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
