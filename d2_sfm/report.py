"""OUT/report.html: one self-contained page to look at a reconstruct or localize run.

python -m d2_sfm.report OUT [--max-points 50000] [--output FILE]

The page works offline (no CDN, no network): an interactive 3D view of the points (coloured,
subsampled to --max-points) and cameras (frusta; drag to rotate, shift- or right-drag to pan,
wheel to zoom) drawn on a <canvas> by d2_sfm/report_assets/viewer.js, which is inlined together
with the data (JSON); per-image registration and keypoint statistics; match pictures of the
strongest and weakest verified pairs (OpenCV drawings, inlined as JPEG data URIs); the
reliability warnings; timings and settings from summary.json; for localize runs, per-query
inliers, failures and, with ground truth, position and rotation errors.

Everything read from the run (image names, warnings) is HTML-escaped, and the JSON data block
cannot close its <script> element. A small script records JavaScript errors into
<pre id="d2sfm-errors"> (shown when not empty) so that a broken page says so, also to tests.
The file is written to `report.html.partial` and renamed when complete.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
from pathlib import Path

from .atomic import atomic_path
from .cli import run_cli
from .errors import D2SfmError
from .localization.estimation import results_name
from .report_contents import (ReportError, RunContents, image_rows, keypoint_counts_and_sizes, load_run,
                              match_plots, queries_of, scene_data)

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("report_assets")
REPORT_NAME = "report.html"
MAX_POINTS = 50_000
MAX_TABLE_ROWS = 5000


# ----------------------------------------------------------------------------------------------
# HTML


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def json_for_script(data: object) -> str:
    """JSON that cannot end its <script> element (or open a comment) whatever strings it holds."""
    return (json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def table(headers: list[str], rows: list[list[object]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows[:MAX_TABLE_ROWS]):
        css = f' class="{esc(classes[i])}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>")
    more = (f"<p class=note>{len(rows) - MAX_TABLE_ROWS} more rows left out (see summary.json).</p>"
            if len(rows) > MAX_TABLE_ROWS else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def headline(run: RunContents) -> list[tuple[str, object]]:
    s = run.summary
    if run.kind == "localize":
        return [("dataset", s.get("dataset")), ("queries", s.get("num_queries")),
                ("localized", s.get("num_localized")), ("failures", len(s.get("failures") or {})),
                ("3D points", run.model.num_points3D() if run.model is not None else "none (cutouts)")]
    return [("status", str(s.get("status", "?")).upper()),
            ("registered", f"{s.get('num_registered', '?')} / {s.get('num_images', '?')}"),
            ("3D points", s.get("num_points3D")), ("observations", s.get("num_observations")),
            ("mean track length", fmt(s.get("mean_track_length"))),
            ("mean reprojection error (px)", fmt(s.get("mean_reprojection_error")))]


def warnings_section(run: RunContents) -> str:
    s = run.summary
    items = [str(w) for w in s.get("warnings") or []]
    items += [f"unreadable image {n}: {r}" for n, r in sorted((s.get("failed_images") or {}).items())]
    items += [f"suspect features in {n}: {r}" for n, r in sorted((s.get("feature_warnings") or {}).items())]
    if run.kind == "localize":
        items += [f"query {n} not localized: {r}" for n, r in sorted((s.get("failures") or {}).items())]
    if s.get("unregistered"):
        items.append(f"not registered: {', '.join(map(str, s['unregistered']))}")
    if not items:
        return "<section><h2>Reliability</h2><p class=ok>No warnings.</p></section>"
    return ("<section><h2>Reliability warnings</h2><ul class=warnings>"
            + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul></section>")


def queries_section(run: RunContents) -> str:
    queries = queries_of(run)
    if not queries:
        return ""
    evaluation = run.summary.get("evaluation") or {}
    errors = evaluation.get("errors") or {} if isinstance(evaluation, dict) else {}
    counts, _ = keypoint_counts_and_sizes(run.features, [str(q["name"]) for q in queries])
    rows, classes = [], []
    for q in queries:
        error = errors.get(results_name(str(q["name"]))) or {}
        rows.append([q["name"], "yes" if q.get("cam_from_world") else "no", counts.get(q["name"], ""),
                     q.get("num_inliers", ""), q.get("num_correspondences", ""), q.get("num_retrieved", ""),
                     fmt(error.get("position"), 3), fmt(error.get("rotation_deg"), 2), q.get("failure") or ""])
        classes.append("" if q.get("cam_from_world") else "bad")
    recall = ""
    if isinstance(evaluation, dict) and evaluation.get("groups"):
        thresholds = " / ".join(f"({m:g} m, {d:g}°)" for m, d in evaluation.get("thresholds", []))
        recall = table(["group", "queries", f"recall at {thresholds}", "median position error",
                        "median rotation error (°)"],
                       [[g, v.get("num_queries"), " / ".join(f"{100 * r:.1f}%" for r in v.get("recall", [])),
                         fmt(v.get("median_position_error"), 3), fmt(v.get("median_rotation_error_deg"), 2)]
                        for g, v in evaluation["groups"].items()])
    return ("<section><h2>Queries</h2>" + recall
            + table(["query", "localized", "keypoints", "inliers", "2D-3D matches", "retrieved",
                     "position error", "rotation error (°)", "failure"], rows, classes) + "</section>")


def images_section(run: RunContents) -> str:
    rows = image_rows(run)
    if not rows or run.kind == "localize":
        if rows:
            total = sum(r["keypoints"] for r in rows)
            return (f"<section><h2>Images</h2><p>{len(rows)} images with features, {total} keypoints "
                    f"(mean {total / len(rows):.0f} per image).</p></section>")
        return ""
    return ("<section><h2>Images</h2>"
            + table(["image", "registered", "camera", "keypoints", "3D points observed", "kept pairs", "problem"],
                    [[r["name"], "yes" if r["registered"] else "no", r["camera"], r["keypoints"], r["points3D"],
                      r["pairs"], r["problem"]] for r in rows],
                    ["" if r["registered"] and not r["problem"] else "bad" for r in rows]) + "</section>")


def plots_section(plots: list[dict]) -> str:
    if not plots:
        return ""
    figures = "".join(f'<figure><img alt="{esc(p["caption"])}" src="{p["src"]}"><figcaption>{esc(p["caption"])}'
                      "</figcaption></figure>" for p in plots)
    return ("<section><h2>Matches</h2><p class=note>Green: verified inliers; red: other raw matches.</p>"
            + figures + "</section>")


def timings_section(run: RunContents) -> str:
    timings = run.summary.get("timings") or run.summary.get("timings_s") or {}
    if not isinstance(timings, dict) or not timings:
        return ""
    return ("<section><h2>Timings</h2>"
            + table(["step", "seconds"], [[k, fmt(v, 1) if isinstance(v, (int, float)) else v]
                                          for k, v in timings.items()]) + "</section>")


def settings_section(run: RunContents) -> str:
    s = run.summary
    keys = ("weights", "settings", "versions", "ground_truth", "stability", "pairs", "cameras", "results", "root")
    shown = {k: s[k] for k in keys if k in s}
    if not shown:
        return ""
    return ("<section><h2>Settings</h2><details><summary>weights, settings, versions (from summary.json)"
            f"</summary><pre>{esc(json.dumps(shown, indent=1, default=str))}</pre></details></section>")


ERROR_CATCHER = """<script>
(function(){var log=[];function show(m){log.push(String(m));var e=document.getElementById("d2sfm-errors");
if(e){e.textContent=log.join("\\n");e.hidden=false;}}window.d2sfmErrors=log;
window.addEventListener("error",function(ev){show("error: "+ev.message+" ("+(ev.lineno||"?")+")");});
var original=console.error;console.error=function(){show("console.error: "+Array.prototype.join.call(arguments," "));
if(original){original.apply(console,arguments);}};})();
</script>"""

STYLE = """<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d1f23;background:#f6f7f9}
header{padding:14px 22px;background:#1d1f23;color:#fff}header h1{margin:0;font-size:19px}
header .sub{color:#aab;font-size:12px}main{padding:0 22px 40px}section{margin:18px 0}
h2{font-size:16px;margin:0 0 8px}.stats{display:flex;flex-wrap:wrap;gap:8px;margin-top:10px}
.stat{background:#2c2f36;border-radius:6px;padding:6px 10px}.stat b{display:block;font-size:16px}
#d2sfm-view{width:100%;height:520px;display:block;background:#14161a;border-radius:6px;cursor:grab}
.controls{margin:6px 0;font-size:12px;color:#555}.legend span{margin-right:12px}
table{border-collapse:collapse;background:#fff;font-size:12.5px}td,th{border:1px solid #dde;padding:3px 7px;text-align:left}
tr.bad td{background:#fff1f0}ul.warnings li{color:#a4260b;margin:3px 0}.ok{color:#1d7a2f}.note{color:#666;font-size:12px}
figure{margin:10px 0}figure img{max-width:100%;border-radius:4px}figcaption{font-size:12px;color:#444}
pre{background:#fff;border:1px solid #dde;padding:8px;overflow:auto;max-height:420px;font-size:12px}
#d2sfm-errors{color:#a4260b;border-color:#e8a}
</style>"""


def render_html(run: RunContents, scene: dict | None, plots: list[dict]) -> str:
    viewer = (ASSETS / "viewer.js").read_text(encoding="utf-8")
    stats = "".join(f"<div class=stat>{esc(k)}<b>{esc(v)}</b></div>" for k, v in headline(run) if v is not None)
    if scene is not None:
        shown, total = len(scene["points"]["xyz"]) // 3, scene["points"]["total"]
        view = (f"<section><h2>3D view</h2><canvas id=d2sfm-view></canvas><div class=controls>"
                "drag: rotate · shift-drag or right-drag: pan · wheel: zoom · "
                "<button id=d2sfm-reset type=button>reset view</button> "
                "<label><input id=d2sfm-cameras type=checkbox checked> cameras</label> · "
                f"{shown} of {total} points shown · <span class=legend><span style='color:#ff5a4e'>■ registered"
                "</span><span style='color:#4ec3ff'>■ localized query</span></span></div></section>")
        data = f'<script type="application/json" id="d2sfm-data">{json_for_script(scene)}</script>'
    else:
        view, data = "<section><h2>3D view</h2><p class=note>No model to show.</p></section>", ""
    notes = "".join(f"<li>{esc(n)}</li>" for n in run.notes)
    title = f"d2_sfm {run.kind}: {run.root.resolve().name}"
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title>", STYLE, ERROR_CATCHER, "</head><body>",
        f"<header><h1>{esc(title)}</h1><div class=sub>{esc(run.root.resolve())}</div>"
        f"<div class=stats>{stats}</div></header><main>",
        "<pre id=d2sfm-errors hidden></pre>",
        view, warnings_section(run), queries_section(run), images_section(run), plots_section(plots),
        timings_section(run), settings_section(run),
        f"<section><h2>Left out</h2><ul>{notes}</ul></section>" if notes else "",
        "</main>", data, f"<script>{viewer}</script>", "</body></html>", ""])


def write_report_or_warn(out_dir: Path) -> Path | None:
    """`write_report` for the end of a run: a failure to write the page is a warning, never a
    failed run. Returns the page, or None."""
    try:
        return write_report(out_dir)
    except (D2SfmError, OSError, ValueError) as error:
        logger.warning("report.html not written in %s: %s", out_dir, error)
        return None


def write_report(out_dir: Path, output: Path | None = None, max_points: int = MAX_POINTS) -> Path:
    """Write `out_dir/report.html` (or `output`) for a reconstruct or localize output folder."""
    run = load_run(out_dir)
    scene = scene_data(run, max_points)
    plots = match_plots(run)
    page = render_html(run, scene, plots)
    output = Path(output) if output is not None else Path(out_dir) / REPORT_NAME
    with atomic_path(output) as partial:
        partial.write_text(page, encoding="utf-8")
    logger.info("Wrote %s (%.0f kB)", output, output.stat().st_size / 1024)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="reconstruct or localize output folder")
    parser.add_argument("--output", type=Path, help="HTML file to write (default: FOLDER/report.html)")
    parser.add_argument("--max-points", type=int, default=MAX_POINTS, help="3D points drawn at most (subsampled)")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_points < 0:
        raise ReportError("--max-points must be at least 0")
    path = write_report(args.folder, args.output, args.max_points)
    print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
