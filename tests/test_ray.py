"""extract and match through a real two-node Ray cluster on the loopback interface: the same files,
bit for bit, as a local run; a worker killed mid-extraction is retried; a resume skips done images.

The cluster (a head node and a second node process with its own resources) is started here and
ended by its own process ids. It listens on 127.0.0.2, a loopback-only address: Ray rewrites the
literal 127.0.0.1 to the machine's outward address whenever multi-node clusters are enabled, and
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps 127.0.0.1) makes `ray start` refuse a second node.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from skimage import data as skdata

# The test cluster is loopback-only and private to this module: no token authentication. Set before
# Ray loads its configuration; otherwise a ~/.ray/auth_token left by any earlier local ray.init()
# turns token authentication on for `ray start` but not for a driver given an explicit address.
os.environ["RAY_AUTH_MODE"] = "disabled"
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from d2_sfm import extract, match  # noqa: E402
from d2_sfm.distributed.tasks import weights_file  # noqa: E402
from d2_sfm.executors import ExecutorConfig, disconnect, map_unordered, ray_session  # noqa: E402
from d2_sfm.extractor import ExtractionConfig  # noqa: E402

HOST = "127.0.0.2"
CONFIG = ExtractionConfig(max_edge=240)
NAMES = ["a.jpg", "b.png", "sub/c.jpg", "sub/d.png"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    with open(log, "w") as out:
        return subprocess.Popen([ray_cli, "start", "--block", f"--node-ip-address={HOST}", "--num-cpus=1",
                                 "--object-store-memory=100000000", "--disable-usage-stats", *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    """SIGTERM to each node's `ray start --block` (it stops the processes it started), then SIGKILL
    to the process groups these tests created, for anything left behind."""
    for node in nodes:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(node.pid, signal.SIGKILL)  # the group is this node's own (start_new_session)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory, request):
    try:
        socket.create_server((HOST, 0)).close()
    except OSError as error:
        pytest.skip(f"cannot listen on the loopback address {HOST}: {error}")
    root = Path(f"/tmp/ray_{os.getpid()}")  # short: Unix socket paths are limited to 107 bytes
    logs = tmp_path_factory.mktemp("ray_logs")
    (root / "work").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(root / "work"), "RAY_USAGE_STATS_ENABLED": "0", "D2_SFM_OFFLINE": "1"}
    address = f"{HOST}:{free_port()}"
    nodes = [start_node(["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                         f"--temp-dir={root}"], logs / "head.log", env)]
    try:
        nodes.append(start_node([f"--address={address}", '--resources={"second_node": 1}'],
                                logs / "node.log", env))
        request.getfixturevalue("local_run")  # computed while the nodes start (every test here uses it)
        connect_and_wait(address, nodes, logs)
        yield address
    finally:
        disconnect(ray)
        stop_nodes(nodes)
        shutil.rmtree(root, ignore_errors=True)


def connect_and_wait(address: str, nodes: list[subprocess.Popen], logs: Path, timeout: float = 90) -> None:
    from d2_sfm.executors import ray_session

    deadline = time.time() + timeout
    while True:
        try:
            ray_session(ExecutorConfig("ray", address))
            break
        except Exception:  # noqa: BLE001  (the head is still starting)
            if time.time() > deadline or any(node.poll() is not None for node in nodes):
                raise RuntimeError(f"the Ray test cluster did not start; see {logs}") from None
            time.sleep(0.5)
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        if time.time() > deadline or any(node.poll() is not None for node in nodes):
            raise RuntimeError(f"the second Ray node did not join; see {logs}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_images")
    photo = skdata.astronaut()
    (root / "sub").mkdir()
    for number, name in enumerate(NAMES):
        crop = photo[40 * number:40 * number + 360, 30 * number:30 * number + 480]
        image = cv2.resize(crop, (240, 180), interpolation=cv2.INTER_AREA)[:, :, ::-1]
        cv2.imwrite(str(root / name), np.ascontiguousarray(image))
    return root


@pytest.fixture(scope="module")
def local_run(image_dir, tmp_path_factory, hed_extractor_factory) -> tuple[Path, Path, Path]:
    """Features and matches of every pair, made by the local executor (the reference)."""
    root = tmp_path_factory.mktemp("local")
    features, matches, pairs = root / "features.h5", root / "matches.h5", root / "pairs.txt"
    extract.main(image_dir, features, extractor=hed_extractor_factory(max_edge=240))
    pairs.write_text("".join(f"{a} {b}\n" for a, b in itertools.combinations(NAMES, 2)))
    match.main(pairs, features, matches)
    return features, matches, pairs


def h5_contents(path: Path) -> dict[str, object]:
    """Every dataset (values with dtype and shape) and attribute of an HDF5 file, by path."""
    contents: dict[str, object] = {"/": sorted((k, str(v)) for k, v in h5py.File(path, "r").attrs.items())}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            attrs = sorted((k, str(v)) for k, v in obj.attrs.items())
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                contents[name] = (value.dtype.str, value.shape, value.tobytes(), attrs)
            else:
                contents[name] = attrs
        f.visititems(visit)
    return contents


def assert_same_files(ours: Path, reference: Path) -> None:
    mine, theirs = h5_contents(ours), h5_contents(reference)
    assert sorted(mine) == sorted(theirs)
    different = [key for key in theirs if mine[key] != theirs[key]]
    assert not different, f"{ours} differs from {reference} in {different[:5]}"


def test_ray_run_equals_local_run_bit_for_bit(ray_address, image_dir, local_run, tmp_path):
    local_features, local_matches, pairs = local_run
    executor = ExecutorConfig("ray", ray_address)
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    summary = extract.main(image_dir, features, weights="hed_vgg16", config=CONFIG, executor=executor)
    assert sorted(summary.extracted) == NAMES and not summary.failed
    assert_same_files(features, local_features)
    match.main(pairs, features, matches, executor=executor)
    assert_same_files(matches, local_matches)
    assert not features.with_name("features.h5.partial").exists()


def worker_running(task_name: str) -> int | None:
    """The pid of a Ray worker process now running `task_name` (Ray sets its process title)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::{task_name}"):
            return int(entry.name)
    return None


def test_worker_killed_during_extraction_is_retried(ray_address, image_dir, local_run, tmp_path):
    features = tmp_path / "features.h5"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = extract.main(image_dir, features, weights="hed_vgg16", config=CONFIG,
                                              executor=ExecutorConfig("ray", ray_address))
        except BaseException as error:  # noqa: BLE001  (reported by the assertion below)
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.time() + 60
    while killed is None and thread.is_alive() and time.time() < deadline:
        killed = worker_running("extract_image")
        if killed is None:
            time.sleep(0.02)
    assert killed is not None, "no worker was seen running extract_image"
    os.kill(killed, signal.SIGKILL)
    thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert sorted(outcome["summary"].extracted) == NAMES
    assert_same_files(features, local_run[0])


def test_resume_after_a_partial_ray_run_skips_finished_images(ray_address, image_dir, local_run, tmp_path):
    features = tmp_path / "features.h5"
    executor = ExecutorConfig("ray", ray_address)
    extract.main(image_dir, features, image_list=NAMES[:2], weights="hed_vgg16", config=CONFIG, executor=executor)
    summary = extract.main(image_dir, features, weights="hed_vgg16", config=CONFIG, executor=executor)
    assert summary.skipped_existing == NAMES[:2] and sorted(summary.extracted) == NAMES[2:]
    assert_same_files(features, local_run[0])


def test_bad_image_fails_on_the_worker_as_it_does_locally(ray_address, image_dir, tmp_path, hed_extractor_factory):
    images = tmp_path / "images"
    shutil.copytree(image_dir, images)
    good = (images / "a.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (images / "empty.png").write_bytes(b"")
    names = ["a.jpg", "truncated.jpg", "empty.png"]
    local = extract.main(images, tmp_path / "local.h5", image_list=names,
                         extractor=hed_extractor_factory(max_edge=240))
    remote = extract.main(images, tmp_path / "ray.h5", image_list=names, weights="hed_vgg16", config=CONFIG,
                          executor=ExecutorConfig("ray", ray_address))
    assert remote.extracted == local.extracted == ["a.jpg"]
    assert remote.failed == local.failed and set(remote.failed) == {"truncated.jpg", "empty.png"}
    assert_same_files(tmp_path / "ray.h5", tmp_path / "local.h5")


def test_map_unordered_gives_every_result_once_with_a_bounded_window(ray_address):
    config = ExecutorConfig("ray", ray_address, max_in_flight=2)
    consumed = []

    def items():
        for number in range(12):
            consumed.append(number)
            yield number

    results = []
    for result in map_unordered(config, lambda offset, x: x * x + offset, items(), args=(1,)):
        results.append(result)
        assert len(consumed) <= len(results) + 2  # items are read lazily: at most 2 tasks pending
    assert sorted(results) == [x * x + 1 for x in range(12)]
    assert list(map_unordered(ExecutorConfig(), lambda offset, x: x + offset, [3, 1, 2], args=(10,))) == [13, 11, 12]


def test_a_planted_worker_checkpoint_is_replaced_never_loaded(ray_address, tmp_path, monkeypatch):
    """Workers cache the driver's checkpoint by its sha256 name: a file already there under that name
    is hashed again, and replaced from the object store when its bytes differ."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = b"the driver's checkpoint bytes"
    sha256 = hashlib.sha256(data).hexdigest()
    folder = tmp_path / f"d2_sfm_ray_weights-{os.getuid()}"
    folder.mkdir()
    (folder / f"{sha256}.pth").write_bytes(b"planted")
    ray_session(ExecutorConfig("ray", ray_address))
    path = weights_file(sha256, [ray.put(data)])
    assert path == folder / f"{sha256}.pth" and path.read_bytes() == data
    assert weights_file(sha256, [None]) == path  # the genuine file is reused: nothing fetched


def test_cluster_lost_mid_run_is_one_error_line_and_the_run_resumes(image_dir, local_run, tmp_path):
    """A cluster of its own (one head node) killed while the driver waits for results: one error
    line and exit 2 soon after D2_SFM_RAY_LOST_AFTER_S, the features file is not written, and a local
    run resumes from the items kept, to the same features."""
    images = tmp_path / "images"
    shutil.copytree(image_dir, images)
    for number in range(4):  # enough images to be killed mid-run: copies under other names
        shutil.copy(image_dir / NAMES[number % 4], images / f"copy{number}.{NAMES[number % 4].rsplit('.')[-1]}")
    root = Path(f"/tmp/ray_{os.getpid()}_lost")
    (root / "work").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(root / "work"), "RAY_USAGE_STATS_ENABLED": "0", "D2_SFM_OFFLINE": "1",
           "D2_SFM_RAY_LOST_AFTER_S": "1"}
    port = free_port()
    head = start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={root}"],
                      tmp_path / "head.log", env)
    features = tmp_path / "features.h5"
    try:
        driver = subprocess.Popen([sys.executable, "-m", "d2_sfm.extract", "--images", str(images), "--output",
                                   str(features), "--weights", "hed_vgg16", "--max-edge", "240", "--executor", "ray",
                                   "--ray-address", f"{HOST}:{port}"], env=env, stderr=subprocess.PIPE)
        stderr = read_until(driver, re.compile(rb"extract \(ray\): +\d+%.* [4-7]/8"), timeout=90)
        os.killpg(head.pid, signal.SIGKILL)  # the whole cluster goes away while results come in
        stderr += driver.communicate(timeout=60)[1]
    finally:
        driver.kill() if driver.poll() is None else None
        stop_nodes([head])
        shutil.rmtree(root, ignore_errors=True)
    text = stderr.decode(errors="replace")
    errors = [line for line in re.split(r"[\r\n]", text) if " ERROR] " in line]
    assert driver.returncode == 2, text[-2000:]
    assert len(errors) == 1 and "went away" in errors[0] and "Traceback" not in text
    assert not features.exists()
    summary = extract.main(images, features, weights="hed_vgg16", config=CONFIG)
    assert summary.skipped_existing and len(summary.extracted + summary.skipped_existing) == 8
    with h5py.File(features, "r") as ours, h5py.File(local_run[0], "r") as theirs:
        for name in NAMES:
            for key in ("keypoints", "descriptors", "scores"):
                assert np.array_equal(ours[name][key][()], theirs[name][key][()])


def read_until(process: subprocess.Popen, pattern: re.Pattern, timeout: float) -> bytes:
    """What `process` wrote to stderr until `pattern` appeared (tqdm ends its lines with \\r)."""
    seen = b""
    deadline = time.time() + timeout
    while not pattern.search(seen):
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk and time.time() < deadline, f"never saw {pattern.pattern!r}: {seen[-2000:]!r}"
        seen += chunk
    return seen
