"""d2_sfm as an hloc extractor and matcher.

Tests marked `needs_hloc` run hloc's real runners and skip when hloc is not importable (it is not
on PyPI; locally: PYTHONPATH=/path/to/Hierarchical-Localization). The others run without hloc.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import d2_sfm.hloc as d2hloc
from d2_sfm import extract
from d2_sfm.h5io import read_features
from d2_sfm.images import read_image, resize
from d2_sfm.matching import MatcherConfig, match_descriptors

WEIGHTS = "hed_vgg16"  # offline
needs_hloc = pytest.mark.skipif(importlib.util.find_spec("hloc") is None,
                                reason="hloc is not importable (not on PyPI; put a checkout on PYTHONPATH)")


class StandInBaseModel(torch.nn.Module):
    """hloc's BaseModel contract (merge default_conf, call _init; check required_inputs)."""
    default_conf: dict = {}
    required_inputs: list = []

    def __init__(self, conf):
        super().__init__()
        self.conf = conf = {**self.default_conf, **conf}
        self._init(conf)

    def forward(self, data):
        missing = [k for k in self.required_inputs if k not in data]
        assert not missing, missing
        return self._forward(data)


def hloc_postprocess(pred: dict[str, torch.Tensor], original_wh: tuple[int, int],
                     resized_wh: tuple[int, int]) -> dict[str, np.ndarray]:
    """What hloc.extract_features does with a prediction before writing it (as_half=False)."""
    pred = {k: v[0].cpu().numpy() for k, v in pred.items()}
    scales = (np.array(original_wh) / np.array(resized_wh)).astype(np.float32)
    pred["keypoints"] = (pred["keypoints"] + 0.5) * scales[None] - 0.5
    return pred


def assert_same_features(ours: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
    """ours: d2_sfm.h5io.read_features (descriptors (N, D)); other: hloc layout (D, N)."""
    assert len(ours["keypoints"]) > 50
    assert ours["keypoints"].shape == other["keypoints"].shape
    np.testing.assert_allclose(ours["keypoints"], other["keypoints"], atol=1e-3)
    np.testing.assert_allclose(ours["scores"], other["scores"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours["descriptors"], other["descriptors"].T, atol=1e-4)
    np.testing.assert_array_equal(ours["image_size"], other["image_size"])


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 512 x 384 RGB photograph (scikit-image's CC0 astronaut) as PNG."""
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage_data.astronaut()[64:448], cv2.COLOR_RGB2BGR))
    return path


# --- without hloc ---------------------------------------------------------------------------------

def test_registered_extractor_matches_cli_for_the_same_resize(photo, tmp_path):
    """d2_sfm.extract's file and the hloc extractor's output, after hloc's own rescaling, agree."""
    output = tmp_path / "cli.h5"
    assert extract.cli(["--images", str(photo.parent), "--output", str(output), "--weights", WEIGHTS,
                        "--max-edge", "256", "--max-sum-edges", "0"]) == 0
    ours = read_features(output, photo.name)

    model_class = d2hloc.make_model_class(d2hloc.ExtractorMethods, StandInBaseModel, "t.d2_sfm", "T")
    model = model_class({"name": "d2_sfm", "weights": WEIGHTS}).eval()
    image = read_image(photo)  # hloc: cv2 colour read, orientation ignored, BGR -> RGB
    resized = resize(image, (256, 192))  # the size both hloc (resize_max 256) and the CLI choose
    tensor = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0
    pred = hloc_postprocess(model({"image": tensor}), (512, 384), (256, 192))
    assert pred["descriptors"].shape[0] == 512 and pred["keypoints"].dtype == np.float32
    assert_same_features(ours, {**pred, "image_size": np.array([512, 384])})


def test_grayscale_input_is_repeated_to_rgb(photo):
    net = torch.nn.Conv2d(3, 8, 3, stride=4)  # any dense map does for the shape contract
    grey = torch.rand(1, 1, 64, 80)
    config = d2hloc.extraction_config({})
    out_grey = d2hloc.extract_hloc_image(net, grey, config)
    out_rgb = d2hloc.extract_hloc_image(net, grey.expand(-1, 3, -1, -1), config)
    torch.testing.assert_close(out_grey, out_rgb)
    with pytest.raises(d2hloc.HlocError, match="expected hloc's image"):
        d2hloc.extract_hloc_image(net, torch.rand(3, 64, 80), config)


def test_matcher_equals_d2_sfm_matching():
    torch.manual_seed(0)
    desc0 = torch.nn.functional.normalize(torch.rand(50, 16), dim=1)
    desc1 = torch.nn.functional.normalize(torch.rand(40, 16), dim=1)
    model_class = d2hloc.make_model_class(d2hloc.MatcherMethods, StandInBaseModel, "t.d2_sfm", "M")
    model = model_class({"name": "d2_sfm", "ratio_threshold": 0.95})
    pred = model({"descriptors0": desc0.T[None], "descriptors1": desc1.T[None]})
    matches0, scores0 = match_descriptors(desc0, desc1, MatcherConfig(ratio_threshold=0.95))
    assert pred["matches0"].shape == (1, 50) and (pred["matches0"] >= 0).sum() > 5
    torch.testing.assert_close(pred["matches0"][0], matches0)
    torch.testing.assert_close(pred["matching_scores0"][0], scores0)


def test_matcher_refuses_more_keypoints_than_hloc_int16_matches():
    data = {"descriptors0": torch.zeros(1, 4, 3), "descriptors1": torch.zeros(1, 4, 32769)}
    with pytest.raises(d2hloc.HlocError, match="int16"):
        d2hloc.match_hloc_pair(data, MatcherConfig())


def test_unknown_conf_keys_are_rejected():
    with pytest.raises(d2hloc.HlocError, match="weigths"):
        d2hloc.extraction_config({"name": "d2_sfm", "weigths": "d2_tf"})
    with pytest.raises(d2hloc.HlocError, match="do_mutual_check"):
        d2hloc.matcher_config({"name": "d2_sfm", "do_mutual_check": True})
    with pytest.raises(d2hloc.HlocError, match="preprocessing"):
        d2hloc.extraction_config({"preprocessing": "tf"})


def test_ready_made_confs():
    ss, ms, mnn = (d2hloc.confs[k] for k in ("d2net-ss", "d2net-ms", "d2-mnn"))
    assert ss["preprocessing"] == {"grayscale": False, "resize_max": 1600}
    assert ss["model"]["name"] == ms["model"]["name"] == d2hloc.EXTRACTOR_NAME
    assert (ss["model"]["multiscale"], ms["model"]["multiscale"]) == (False, True)
    assert len({ss["output"], ms["output"], mnn["output"]}) == 3
    assert d2hloc.extraction_config(ms["model"]).scales == (0.5, 1.0, 2.0)
    assert d2hloc.matcher_config(mnn["model"]) == MatcherConfig()
    custom = d2hloc.extractor_conf(weights="d2_tf", max_keypoints=4096, resize_max=1024)
    assert custom["output"] == "feats-d2sfm-ss-d2_tf-n4096-r1024"
    assert d2hloc.extractor_conf(weights="/ckpt/mine.pth")["output"] == "feats-d2sfm-ss-mine-r1600"


def test_installed_module_holds_exactly_one_class_defined_in_it(monkeypatch):
    """The shape hloc's dynamic_load requires: importable module, one class with that __module__."""
    package = types.ModuleType("standin_hloc_extractors")
    monkeypatch.setitem(sys.modules, package.__name__, package)
    name = f"{package.__name__}.d2_sfm"
    monkeypatch.delitem(sys.modules, name, raising=False)
    cls = d2hloc.make_model_class(d2hloc.ExtractorMethods, StandInBaseModel, name, "D2SfmExtractor")
    d2hloc.install_module(package, "d2_sfm", cls)
    module = __import__(name, fromlist=[""])
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == name]
    assert classes == [cls] and issubclass(cls, StandInBaseModel)
    assert importlib.import_module(name) is module is package.d2_sfm


def test_register_without_hloc_raises_a_clear_error(monkeypatch):
    for name in [n for n in sys.modules if n == "hloc" or n.startswith("hloc.")] + ["hloc"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import hloc` fail
    with pytest.raises(d2hloc.HlocError, match="hloc is not installed.*pip install"):
        d2hloc.register()


def test_d2_sfm_and_its_clis_work_without_hloc():
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['hloc'] = None\n"  # as if hloc were not installed
        "import d2_sfm, d2_sfm.hloc\n"
        "for m in pkgutil.iter_modules(d2_sfm.__path__): importlib.import_module('d2_sfm.' + m.name)\n"
        "try:\n    d2_sfm.hloc.register()\nexcept d2_sfm.errors.D2SfmError as e:\n    print('ERR', e)\n"
        "from d2_sfm import extract\n"
        "extract.cli(['--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ERR hloc is not installed" in result.stdout and "--images" in result.stdout


STAND_IN_HLOC = ("hloc/__init__.py", "hloc/extractors/__init__.py", "hloc/matchers/__init__.py")


def test_importing_touches_no_importable_hloc(tmp_path):
    # an importable package named hloc on sys.path: importing d2_sfm.hloc must leave it alone
    # (registration itself is checked against the real hloc below, where it is installed)
    for relative in STAND_IN_HLOC:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    code = ("import sys\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "import d2_sfm.hloc\n"
            "assert not any(m == 'hloc' or m.startswith('hloc.') for m in sys.modules), 'import touched hloc'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- with hloc: its real runners on our extractor and matcher -------------------------------------

@pytest.fixture(scope="module")
def hloc_scene(shared_data, tmp_path_factory):
    """6 kermit views at 480 x 360 through hloc: features, exhaustive pairs, matches, SfM.

    (At 320 x 240 with the offline weights the mapper occasionally registered only 2-3 views.)
    """
    pytest.importorskip("hloc")
    from hloc import extract_features, match_features, pairs_from_exhaustive, reconstruction

    d2hloc.register()
    root = tmp_path_factory.mktemp("hloc")
    images = root / "images"
    images.mkdir()
    for source in sorted((shared_data / "sfm" / "kermit").glob("*.jpg"))[:6]:
        small = cv2.resize(cv2.imread(str(source)), (480, 360), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(images / f"{source.stem}.png"), small)
    outputs = root / "outputs"
    conf = copy.deepcopy(d2hloc.confs["d2net-ss"])
    conf["model"]["weights"] = WEIGHTS
    features = extract_features.main(conf, images, outputs, as_half=False)
    pairs = outputs / "pairs-exhaustive.txt"
    pairs_from_exhaustive.main(pairs, features=features)
    matches = match_features.main(d2hloc.confs["d2-mnn"], pairs, conf["output"], outputs)
    model = reconstruction.main(outputs / "sfm", images, pairs, features, matches)
    return types.SimpleNamespace(images=images, outputs=outputs, features=features, pairs=pairs,
                                 matches=matches, model=model, sfm=outputs / "sfm")


@needs_hloc
def test_register_is_found_by_hloc_dynamic_load():
    from hloc import extractors, matchers
    from hloc.utils.base_model import BaseModel, dynamic_load

    classes = d2hloc.register()
    assert d2hloc.register() == classes  # idempotent
    assert dynamic_load(extractors, "d2_sfm") is classes["extractor"]
    assert dynamic_load(matchers, "d2_sfm") is classes["matcher"]
    assert issubclass(classes["extractor"], BaseModel) and issubclass(classes["matcher"], BaseModel)


@needs_hloc
def test_hloc_extract_features_writes_what_our_cli_writes(hloc_scene, tmp_path):
    output = tmp_path / "cli.h5"
    extract.main(hloc_scene.images, output, weights=WEIGHTS)  # 480 px: no resize on either side
    names = sorted(p.name for p in hloc_scene.images.iterdir())
    with h5py.File(hloc_scene.features, "r") as f:
        assert sorted(f) == names
        for name in names:
            grp = f[name]
            assert grp["keypoints"].attrs["uncertainty"] == pytest.approx(1.0)
            assert_same_features(read_features(output, name), {k: grp[k][()] for k in grp})


@needs_hloc
def test_hloc_resizes_and_rescales_our_multiscale_keypoints(hloc_scene, tmp_path):
    from hloc import extract_features

    conf = d2hloc.extractor_conf(multiscale=True, weights=WEIGHTS, resize_max=240)
    path = extract_features.main(conf, hloc_scene.images, tmp_path, image_list=["kermit000.png"])
    with h5py.File(path, "r") as f:
        keypoints, size = f["kermit000.png/keypoints"][()], f["kermit000.png/image_size"][()]
        uncertainty = f["kermit000.png/keypoints"].attrs["uncertainty"]
    assert size.tolist() == [480, 360] and uncertainty == pytest.approx(2.0)
    assert len(keypoints) > 20 and (keypoints >= -0.5).all() and (keypoints < size - 0.5).all()
    assert keypoints.max(0)[0] > 300  # mapped back to the original frame, not left at 240 px


@needs_hloc
def test_hloc_matches_equal_hloc_nearest_neighbor_and_ours(hloc_scene):
    from hloc.matchers.nearest_neighbor import NearestNeighbor
    from hloc.utils.io import get_matches

    hloc_nn = NearestNeighbor({"do_mutual_check": True})
    for line in hloc_scene.pairs.read_text().splitlines()[:4]:
        name0, name1 = line.split()
        stored, _ = get_matches(hloc_scene.matches, name0, name1)
        desc = [torch.from_numpy(read_features(hloc_scene.features, n)["descriptors"]) for n in (name0, name1)]
        matches0, _ = match_descriptors(*desc)
        expected = torch.stack([torch.nonzero(matches0 >= 0)[:, 0], matches0[matches0 >= 0]], 1).numpy()
        reference = hloc_nn({"descriptors0": desc[0].T[None], "descriptors1": desc[1].T[None]})["matches0"][0]
        assert len(stored) > 20
        np.testing.assert_array_equal(stored, expected)
        np.testing.assert_array_equal(reference.numpy(), matches0.numpy())


@needs_hloc
def test_hloc_reconstruction_registers_all_views(hloc_scene):
    model = hloc_scene.model
    assert model is not None and model.num_reg_images() >= 5  # 6/6 in 16 of 16 local runs
    assert model.num_points3D() > 50
    errors = [p.error for p in model.points3D.values()]
    assert np.mean(errors) < 2.0


@needs_hloc
def test_hloc_triangulation_on_our_features(hloc_scene, tmp_path):
    from hloc import triangulation

    # hloc's default verification writes two-view geometries with config UNDEFINED, which
    # pycolmap 4.x's triangulator ignores (0 points whatever the features); estimating them works.
    model = triangulation.main(tmp_path / "tri", hloc_scene.sfm, hloc_scene.images, hloc_scene.pairs,
                               hloc_scene.features, hloc_scene.matches, estimate_two_view_geometries=True)
    assert model.num_reg_images() == hloc_scene.model.num_reg_images()
    assert model.num_points3D() > 0.5 * hloc_scene.model.num_points3D()


@needs_hloc
def test_hloc_localize_sfm_recovers_the_mapped_pose(hloc_scene, tmp_path):
    """Localize one mapped view against the model through the other views' 3D points."""
    import pickle

    from hloc import localize_sfm

    model = hloc_scene.model
    query = max(model.images.values(), key=lambda image: image.name)
    camera = model.cameras[query.camera_id]
    queries = tmp_path / "queries.txt"
    queries.write_text(f"{query.name} {camera.model.name} {camera.width} {camera.height} "
                       + " ".join(f"{p:.10g}" for p in camera.params) + "\n")
    retrieval = tmp_path / "retrieval.txt"
    retrieval.write_text("".join(f"{query.name} {image.name}\n" for image in model.images.values()
                                 if image.name != query.name))
    results = tmp_path / "results.txt"
    localize_sfm.main(model, queries, retrieval, hloc_scene.features, hloc_scene.matches, results)
    with open(f"{results}_logs.pkl", "rb") as f:
        ret = pickle.load(f)["loc"][query.name]["PnP_ret"]
    assert ret is not None and ret["num_inliers"] >= 30  # hloc writes a fallback pose on failure
    name, *qvec_tvec = results.read_text().split()
    wxyz, translation = np.array(qvec_tvec[:4], float), np.array(qvec_tvec[4:], float)
    rotation = Rotation.from_quat(wxyz[[1, 2, 3, 0]]).as_matrix()  # cam_from_world
    mapped = query.cam_from_world()
    angle = Rotation.from_matrix(rotation.T @ mapped.rotation.matrix()).magnitude()
    assert name == query.name and np.degrees(angle) < 2.0
    centers = np.array([image.projection_center() for image in model.images.values()])
    scene_size = np.linalg.norm(centers - centers.mean(0), axis=1).max()
    localized_center = -rotation.T @ translation
    assert np.linalg.norm(localized_center - query.projection_center()) < 0.1 * scene_size
