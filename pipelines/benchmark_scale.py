"""How each localization stage's cost grows with the dataset: seconds and peak RSS per stage on
synthetic Aachen v1.1 look-alikes of several sizes, for the local and the Ray executor.

    python pipelines/benchmark_scale.py --workdir /tmp/scale [--sizes 100 400 1600] [--executors local ray]
        [--image-size 320 240] [--query-ratio 0.15] [--ray-cpus 2] [--ray-max-size N] [--json FILE]
        [--large-probe IMAGE IMAGE]
    python pipelines/benchmark_scale.py --workdir /tmp/scale --report MEASUREMENTS.json   (written by --json)
    python pipelines/benchmark_scale.py --workdir /tmp/scale --cost-model MEASUREMENTS.json

Per size: `python -m d2_sfm.datasets.synthetic --layout aachen_v1_1` writes the dataset (queries in
Aachen v1.1's proportion, 1,015 / 6,697), then every stage runs as its own process, timed, with its
peak RSS from wait4 (the driver's, for Ray: workers are separate processes):
  extract       python -m d2_sfm.extract (database + queries), per executor
  localize      python -m d2_sfm.localize --dataset aachen_v1_1 --pairs <ground-truth covisibility pairs>:
                extraction is up to date, so it runs db_pairs (covisibility), db_match, triangulate,
                query_match and pose estimation; their seconds come from its summary.json and their
                peak RSS from sampling the process's VmRSS between its step log lines
  match         python -m d2_sfm.match on the same db and query pairs, per executor (Ray's files are
                compared with the local ones, bit for bit)
  triangulate   python -m d2_sfm.triangulate on the same matches
Net seconds: a whole process's seconds less the start-up of an empty one (importing torch, pycolmap
and d2_sfm, measured once); stages inside localize are timed by it. The growth exponent of a stage
between two sizes is log(t2 / t1) / log(w2 / w1) on net seconds, w the work the stage does (images,
reference observations, unique pairs, raw matches or queries: see STAGE_WORK); above 1.2 (on stages
over 1 s) the stage is flagged as super-linear.
`--large-probe A B` (e.g. two Sceaux castle photos of ../shared/data, 2832 x 2128): per-image
extraction and per-pair matching seconds at the default --max-edge 1600, Aachen's resolution, in
this process (the cost model's per-item costs at full size); `--sizes` may then be empty.
`--report`: the tables again from a --json file and the outputs left in --workdir.
`--cost-model`: wall time of full Aachen v1.1 and InLoc runs on 1, 8 and 64 CPU workers from the
measured per-item costs (see `cost_model`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py

PYTHON = sys.executable
QUERY_RATIO = 1015 / 6697  # Aachen Day-Night v1.1: queries per database image
RAY_HOST = "127.0.0.2"  # loopback only (Ray rewrites the literal 127.0.0.1 to the outward address)
PHASES = {r"\[3/5\]": "3d", r"\[4/5\]": "query_match", r"\[5/5\]": "localize"}
SUPER_LINEAR = 1.2


def run_measured(command: list[str], log: Path, env: dict[str, str], phases: dict[str, str] | None = None
                 ) -> dict[str, object]:
    """Run `command`; its seconds and peak RSS (MB, wait4), and per phase (log lines matching
    `phases` start one) the peak of VmRSS sampled every 0.1 s."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    phase = {"name": "start"}
    peaks: dict[str, float] = {}

    def follow(stream) -> None:
        with open(log, "w") as out:
            for line in stream:
                out.write(line)
                for pattern, name in (phases or {}).items():
                    if re.search(pattern, line):
                        phase["name"] = name

    reader = threading.Thread(target=follow, args=(process.stderr,), daemon=True)
    reader.start()
    status = Path(f"/proc/{process.pid}/status")
    while True:
        pid, code, usage = os.wait4(process.pid, os.WNOHANG)  # wait4: this child's own rusage
        if pid:
            break
        try:
            rss = int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1)) / 1024
            peaks[phase["name"]] = max(peaks.get(phase["name"], 0.0), rss)
        except (OSError, AttributeError):
            pass
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(code)
    reader.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)} (see {log})")
    return {"seconds": round(seconds, 2), "rss_mb": round(usage.ru_maxrss / 1024),
            "phase_rss_mb": {k: round(v) for k, v in peaks.items()}}


def start_ray(root: Path, cpus: int, env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """A one-node Ray cluster on the loopback interface, ended later by its own process id."""
    with socket.socket() as probe:
        probe.bind((RAY_HOST, 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    node = subprocess.Popen([str(Path(PYTHON).with_name("ray")), "start", "--head", "--block",
                             f"--node-ip-address={RAY_HOST}", f"--port={port}", f"--num-cpus={cpus}",
                             "--include-dashboard=false", f"--temp-dir={root}", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"{RAY_HOST}:{port}"
    probe_code = f"import ray; ray.init(address={address!r}, log_to_driver=False); ray.shutdown()"
    while subprocess.run([PYTHON, "-c", probe_code], env=env, capture_output=True).returncode != 0:
        if node.poll() is not None or time.perf_counter() - start > 120:
            raise SystemExit("the Ray cluster did not start")
        time.sleep(1)
    return node, address, time.perf_counter() - start


def stop_ray(node: subprocess.Popen) -> None:
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def same_h5(a: Path, b: Path) -> bool:
    """Whether two HDF5 files hold the same datasets (dtype, shape, bytes) and attributes."""
    def contents(path: Path) -> dict[str, object]:
        found: dict[str, object] = {}
        with h5py.File(path, "r") as f:
            found["/"] = sorted((k, str(v)) for k, v in f.attrs.items())
            f.visititems(lambda name, obj: found.__setitem__(name, (
                sorted((k, str(v)) for k, v in obj.attrs.items()),
                (obj.dtype.str, obj.shape, obj[()].tobytes()) if isinstance(obj, h5py.Dataset) else None)))
        return found
    return contents(a) == contents(b)


# The work each stage's cost should be linear in (the synthetic site has a fixed size, so more
# images also mean longer tracks and more matches per pair: images alone would mislead). Covisibility
# counts shared points of image pairs by a sparse product: its work is the co-observations, the sum
# over 3D points of their track length squared.
STAGE_WORK = {"extract": "images", "db_pairs": "co_observations", "db_match": "db_pairs", "triangulate": "db_matches",
              "query_match": "query_pairs", "localize": "queries", "localize-process": "images"}


def work_counts(data: Path, out: Path) -> dict[str, int]:
    """Images, reference-model observations and co-observations, unique db and query pairs, raw db
    matches, queries."""
    from d2_sfm.colmap import pycolmap
    from d2_sfm.datasets.formats import read_pairs, unique_pairs

    reference = pycolmap.Reconstruction(data / "3D-models" / "aachen_v_1_1")
    lengths = [point.track.length() for point in reference.points3D.values()]
    matches = []
    with h5py.File(out / "matches-db.h5", "r") as f:
        f.visititems(lambda name, obj: matches.append(int((obj[()] >= 0).sum())) if name.endswith("matches0") else None)
    query_pairs = read_pairs(out / "pairs-query.txt")
    queries = len({query for query, _ in query_pairs})
    return {"images": reference.num_reg_images() + queries, "queries": queries,
            "observations": sum(lengths), "co_observations": sum(length * length for length in lengths),
            "db_pairs": len(unique_pairs(read_pairs(out / "pairs-db-covis.txt"))),
            "query_pairs": len(unique_pairs(query_pairs)), "db_matches": sum(matches)}


def assign_work(result: dict, counts: dict[str, int]) -> None:
    result["work"] = counts
    for stage, row in result["stages"].items():
        row["work"] = counts[STAGE_WORK[stage.split("/")[0]]]


def startup_seconds(env: dict[str, str], log: Path) -> float:
    """Seconds of a process that only imports what the stages import (the best of three)."""
    code = "import d2_sfm.extract, d2_sfm.match, d2_sfm.triangulate, d2_sfm.localization.chain"
    return min(float(run_measured([PYTHON, "-c", code], log, env)["seconds"]) for _ in range(3))


def add_net(rows: dict[str, dict], startup: float) -> None:
    for stage, row in rows.items():
        if row.get("seconds") is not None:
            inside = "/in-localize" in stage
            row["net_s"] = round(row["seconds"] if inside else max(row["seconds"] - startup, 0.01), 3)


def bench_size(size: int, args: argparse.Namespace, env: dict[str, str], ray_address: str | None) -> dict:
    root = args.workdir / f"aachen{size}"
    data, out = root / "dataset", root / "local"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queries = max(3, round(size * args.query_ratio))
    if not (data / "3D-models").is_dir():
        subprocess.run([PYTHON, "-m", "d2_sfm.datasets.synthetic", "--layout", "aachen_v1_1", "--output", str(data),
                        "--num-db", str(size), "--num-queries", str(queries), "--image-size",
                        *map(str, args.image_size), "--overwrite"], env=env, check=True, capture_output=True)
    for previous in (out, root / "ray", root / "match-local", root / "match-ray", root / "triangulate"):
        shutil.rmtree(previous, ignore_errors=True)  # a resumed localize would skip its steps
    images = data / "images_upright"
    query_pairs = next((data / "pairs").glob("pairs-query-gt-covis*.txt"))
    result: dict[str, object] = {"db_images": size, "queries": queries, "stages": {}, "keypoints_per_image": None}
    stages = result["stages"]
    executors = [e for e in args.executors if e == "local" or (ray_address and size <= args.ray_max_size)]
    for executor in executors:  # extraction first: localize then finds its features up to date
        target = out if executor == "local" else root / executor
        target.mkdir(parents=True, exist_ok=True)
        command = [PYTHON, "-m", "d2_sfm.extract", "--images", str(images), "--output", str(target / "features.h5"),
                   "--weights", "hed_vgg16", "--executor", executor, "--overwrite"]
        command += ["--ray-address", ray_address] if executor == "ray" else []
        stages[f"extract/{executor}"] = {**run_measured(command, logs / f"extract-{executor}.log", env),
                                         "work": 0}
    with h5py.File(out / "features.h5", "r") as f:
        counts = []
        f.visititems(lambda name, obj: counts.append(obj.shape[0]) if name.endswith("/keypoints") else None)
        result["keypoints_per_image"] = round(sum(counts) / max(len(counts), 1))
    (out / "summary.json").unlink(missing_ok=True)
    localize = run_measured([PYTHON, "-m", "d2_sfm.localize", "--dataset", "aachen_v1_1", "--root", str(data),
                             "--output", str(out), "--pairs", str(query_pairs), "--weights", "hed_vgg16"],
                            logs / "localize.log", env, PHASES)
    timings = json.loads((out / "summary.json").read_text())["timings_s"]
    phase_rss = localize["phase_rss_mb"]
    for stage, phase in (("db_pairs", "3d"), ("db_match", "3d"), ("triangulate", "3d"), ("query_match", "query_match"),
                         ("localize", "localize")):
        stages[f"{stage}/in-localize"] = {"seconds": timings.get(stage), "rss_mb": phase_rss.get(phase), "work": 0}
    stages["localize-process"] = {"seconds": localize["seconds"], "rss_mb": localize["rss_mb"], "work": 0}
    for executor in executors:
        target = root / f"match-{executor}"
        target.mkdir(exist_ok=True)
        for name, pairs in (("db_match", out / "pairs-db-covis.txt"), ("query_match", out / "pairs-query.txt")):
            features = (out if executor == "local" else root / executor) / "features.h5"
            matches = target / f"{name}.h5"
            command = [PYTHON, "-m", "d2_sfm.match", "--pairs", str(pairs), "--features", str(features),
                       "--output", str(matches), "--executor", executor, "--overwrite"]
            command += ["--ray-address", ray_address] if executor == "ray" else []
            stages[f"{name}/{executor}"] = {**run_measured(command, logs / f"{name}-{executor}.log", env), "work": 0}
    tri = root / "triangulate"
    shutil.rmtree(tri, ignore_errors=True)
    stages["triangulate/process"] = {**run_measured(
        [PYTHON, "-m", "d2_sfm.triangulate", "--reference", str(data / "3D-models" / "aachen_v_1_1"), "--images",
         str(images), "--pairs", str(out / "pairs-db-covis.txt"), "--features", str(out / "features.h5"),
         "--matches", str(out / "matches-db.h5"), "--output", str(tri)], logs / "triangulate.log", env),
        "work": 0}
    if "ray" in executors:
        result["ray_equals_local"] = {
            "features": same_h5(root / "ray" / "features.h5", out / "features.h5"),
            "db_matches": same_h5(root / "match-ray" / "db_match.h5", out / "matches-db.h5"),
            "query_matches": same_h5(root / "match-ray" / "query_match.h5", root / "match-local" / "query_match.h5")}
    assign_work(result, work_counts(data, out))
    return result


def large_probe(images: list[Path]) -> dict[str, float]:
    """Seconds per image (extraction, default settings: longest side 1600 px) and per pair (matching
    the two images), measured after one warm-up extraction, as wall time and as this process's CPU
    time (what one dedicated core takes with one torch thread; wall time grows with the load of a
    shared machine); and their keypoint counts."""
    import torch

    from d2_sfm.extractor import D2Extractor
    from d2_sfm.matching import match_descriptors

    extractor = D2Extractor("hed_vgg16")
    extractor.extract_path(images[0])  # warm-up: first-call allocations
    features, seconds, cpu = [], [], []
    for image in images:
        start, start_cpu = time.perf_counter(), time.process_time()
        features.append(extractor.extract_path(image))
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    desc0, desc1 = (torch.from_numpy(f.descriptors) for f in features)
    start, start_cpu = time.perf_counter(), time.process_time()
    match_descriptors(desc0, desc1)
    return {"extract_s_per_image": round(sum(seconds) / len(seconds), 2),
            "match_s_per_pair": round(time.perf_counter() - start, 2),
            "extract_cpu_s_per_image": round(sum(cpu) / len(cpu), 2),
            "match_cpu_s_per_pair": round(time.process_time() - start_cpu, 2),
            "keypoints": [len(f) for f in features], "torch_threads": torch.get_num_threads(),
            "image_size": list(features[0].image_size), "load_average": [round(x, 1) for x in os.getloadavg()]}


# Work of full runs (d2_sfm's defaults, as hloc: Aachen 20 covisible pairs per database image, an
# upper bound on the unique pairs, and 50 retrieved images per query; InLoc 40 retrieved cutouts per
# query, every cutout extracted at most). Covisibility pairs are left out: linear in the reference
# model's co-observations, seconds for a whole model.
FULL_RUNS = {
    "Aachen v1.1 (6,697 db + 1,015 queries)": {"extract": 6697 + 1015, "db_match": 6697 * 20,
                                               "triangulate": 6697 * 20, "query_match": 1015 * 50, "localize": 1015},
    "InLoc (9,972 cutouts + 356 queries)": {"extract": 9972 + 356, "query_match": 356 * 40, "localize": 356},
}
PARALLEL = ("extract", "db_match", "query_match", "localize")  # spread over workers; the rest run on one machine


def per_item_costs(report: dict) -> dict[str, float]:
    """Seconds per item at full resolution: extraction and matching from the large-image probe (CPU
    seconds of one torch thread: a dedicated core); triangulation (per db pair) and pose estimation
    (per query) from the largest synthetic run (wall seconds), scaled by keypoints per image (their
    work grows with the matches)."""
    largest = max((r for r in report["results"] if "extract/local" in r["stages"]), key=lambda r: r["db_images"])
    stages, probe = largest["stages"], report["large_probe"]
    scale = (sum(probe["keypoints"]) / len(probe["keypoints"])) / largest["keypoints_per_image"]
    extract = probe.get("extract_cpu_s_per_image", probe["extract_s_per_image"])  # one dedicated core
    match = probe.get("match_cpu_s_per_pair", probe["match_s_per_pair"])
    return {"extract": extract, "db_match": match, "query_match": match,
            "triangulate": scale * stages["triangulate/in-localize"]["net_s"] / largest["work"]["db_pairs"],
            "localize": scale * stages["localize/in-localize"]["net_s"] / stages["localize/in-localize"]["work"]}


def cost_model(report: dict) -> None:
    """Hours of each full run on N CPU workers: parallel stages divide by N, the others do not."""
    costs = per_item_costs(report)
    print("\nPer-item seconds used: " + ", ".join(f"{k} {v:.4g}" for k, v in costs.items()))
    print("\n| run | stage hours on 1 worker | 1 CPU worker | 8 CPU workers | 64 CPU workers |")
    print("|---|---|---:|---:|---:|")
    for run, work in FULL_RUNS.items():
        hours = {stage: count * costs[stage] / 3600 for stage, count in work.items()}
        serial = sum(h for stage, h in hours.items() if stage not in PARALLEL)
        parallel = sum(h for stage, h in hours.items() if stage in PARALLEL)
        detail = ", ".join(f"{stage} {h:.2f}" for stage, h in hours.items())
        walls = " | ".join(f"{serial + parallel / n:.1f} h" for n in (1, 8, 64))
        print(f"| {run} | {detail} | {walls} |")


def growth(results: list[dict], startup: float) -> list[tuple[str, int, int, float, float]]:
    """(stage, size1, size2, exponent, seconds) for every stage measured at two consecutive sizes.
    Left out: the whole localize process (stages of different work), and whole-process stages
    whose net seconds are below the start-up subtracted from them (the start-up's noise dominates)."""
    rows = []
    for small, large in zip(results, results[1:]):
        for stage, a in small["stages"].items():
            b = large["stages"].get(stage)
            if stage == "localize-process" or not b or not a.get("net_s") or not b.get("net_s"):
                continue
            if a["work"] == b["work"]:
                continue
            if "/in-localize" not in stage and min(a["net_s"], b["net_s"]) < startup:
                continue
            exponent = math.log(b["net_s"] / a["net_s"]) / math.log(b["work"] / a["work"])
            rows.append((stage, small["db_images"], large["db_images"], exponent, b["net_s"]))
    return rows


def print_tables(results: list[dict], ray_start: float | None, startup: float) -> None:
    print(f"\nProcess start-up (subtracted from whole-process stages): {startup:.2f} s")
    print("\n| db images | queries | stage | work | seconds | net s | net s per item | peak RSS (MB) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for result in results:
        for stage, row in result["stages"].items():
            net = row.get("net_s")
            per_item = f"{net / row['work']:.3g}" if net and row["work"] else "-"
            print(f"| {result['db_images']} | {result['queries']} | {stage} | {row['work']} | "
                  f"{row.get('seconds', '-')} | {net if net is not None else '-'} | {per_item} | "
                  f"{row.get('rss_mb', '-')} |")
        if "ray_equals_local" in result:
            print(f"\nRay outputs equal the local ones at {result['db_images']} images: {result['ray_equals_local']}")
    if ray_start is not None:
        print(f"\nRay cluster start (not in the stage times): {ray_start:.1f} s")
    rows = growth(results, startup)
    if rows:
        print("\n| stage | sizes | growth exponent (1 = linear in work) | flag |")
        print("|---|---|---:|---|")
        for stage, size1, size2, exponent, seconds in rows:
            flag = "SUPER-LINEAR" if exponent > SUPER_LINEAR and seconds > 1.0 else ""
            print(f"| {stage} | {size1} -> {size2} | {exponent:.2f} | {flag} |")


def main() -> None:  # noqa: C901  (one flat sequence of optional parts)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="datasets and outputs go here")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 400, 1600])
    parser.add_argument("--executors", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    parser.add_argument("--image-size", type=int, nargs=2, default=(320, 240))
    parser.add_argument("--query-ratio", type=float, default=QUERY_RATIO)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the benchmark's Ray node")
    parser.add_argument("--ray-max-size", type=int, default=10**9, help="run the Ray executor up to this size only")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--large-probe", type=Path, nargs=2, metavar="IMAGE", help="two large photos of one scene")
    parser.add_argument("--cost-model", type=Path, metavar="JSON", help="print the cost model from these measurements")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the tables again from these measurements (several files: sizes merged) and "
                             "the outputs left in --workdir")
    args = parser.parse_args()
    if args.cost_model:
        return cost_model(json.loads(args.cost_model.read_text()))
    if args.report:
        saved = [json.loads(path.read_text()) for path in args.report]
        results = sorted((r for report in saved for r in report["results"]), key=lambda r: r["db_images"])
        for result in results:
            root = args.workdir / f"aachen{result['db_images']}"
            assign_work(result, work_counts(root / "dataset", root / "local"))
        for path, report in zip(args.report, saved):
            path.write_text(json.dumps(report, indent=1))  # with the work counts of this version
        ray_start = next((r["ray_start_s"] for r in saved if r.get("ray_start_s")), None)
        return print_tables(results, ray_start, saved[0]["startup_s"])
    report = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    if args.large_probe:
        os.environ.setdefault("D2_SFM_OFFLINE", "1")
        report["large_probe"] = large_probe(args.large_probe)
        print(f"Large-image probe: {json.dumps(report['large_probe'])}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    if not args.sizes:
        return
    env = {**os.environ, "D2_SFM_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    node, address, ray_start = None, None, None
    ray_root = Path(f"/tmp/ray_bench_{os.getpid()}")
    if "ray" in args.executors:
        node, address, ray_start = start_ray(ray_root, args.ray_cpus, env)
    results = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    startup = startup_seconds(env, args.workdir / "startup.log")
    try:
        for size in sorted(args.sizes):
            results.append(bench_size(size, args, env, address))
            add_net(results[-1]["stages"], startup)
            print(f"size {size} done: {json.dumps(results[-1])}", flush=True)
            if args.json:
                report.update(ray_start_s=ray_start, startup_s=startup, results=results)
                args.json.write_text(json.dumps(report, indent=1))
    finally:
        if node is not None:
            stop_ray(node)
            shutil.rmtree(ray_root, ignore_errors=True)
    print_tables(results, ray_start, startup)


if __name__ == "__main__":
    main()
