"""d2_sfm inside hloc (github cvg/Hierarchical-Localization >= 1.5): an extractor and a matcher.

    import d2_sfm.hloc
    d2_sfm.hloc.register()                  # explicit: importing this module changes nothing in hloc
    from hloc import extract_features, match_features
    features = extract_features.main(d2_sfm.hloc.confs["d2net-ss"], images, outputs)
    matches = match_features.main(d2_sfm.hloc.confs["d2-mnn"], pairs, features.stem, outputs)

After `register()`, hloc's `dynamic_load` finds the extractor `hloc.extractors.d2_sfm` and the
matcher `hloc.matchers.d2_sfm`; hloc itself is not modified. Registration puts a module object
for each into `sys.modules` (and on its parent package) holding exactly one class, a subclass of
hloc's own `BaseModel` whose `__module__` is that module's name, which is what `dynamic_load`
checks. Registration is per process: call it before hloc's runners.

The extractor does not resize: hloc resizes (`preprocessing.resize_max`) and passes the image
(1, 3, H, W) RGB in [0, 1]; the model scales it to 0..255 and applies caffe preprocessing itself.
Keypoints come back in that image's pixels (x, y; integer = pixel centre) and hloc maps them to the
original image with (kp + 0.5) * scale - 0.5, exactly like `d2_sfm.extract`.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import logging
import sys
import types
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import D2SfmError
from .extractor import ExtractionConfig, resolve_precision, top_k
from .matching import MatcherConfig, match_descriptors
from .model import preprocess
from .pyramid import extract_keypoints
from .tiling import DenseNetwork
from .weights import load_model

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "d2_sfm"  # conf["model"]["name"] for hloc.extract_features
MATCHER_NAME = "d2_sfm"  # conf["model"]["name"] for hloc.match_features
HLOC_INT16_LIMIT = 32768  # hloc's match writer stores matches0 as int16
INSTALL_HINT = ("install hloc >= 1.5 from source: git clone --recursive "
                "https://github.com/cvg/Hierarchical-Localization && "
                "pip install -e Hierarchical-Localization")


class HlocError(D2SfmError, RuntimeError):
    """hloc is missing or cannot be imported, or an hloc conf for d2_sfm is invalid."""


# --- confs ----------------------------------------------------------------------------------------

# The ExtractionConfig options an hloc conf sets (documented there); resizing is hloc's own, tiling
# is chosen by d2_sfm. Their defaults are ExtractionConfig's; `weights` None: d2_tf if cached or
# downloadable, else hed_vgg16 (offline); a name or a checkpoint path.
HLOC_EXTRACTION_OPTIONS = ("multiscale", "preprocessing", "use_relu", "max_keypoints", "edge_threshold", "precision")
EXTRACTOR_DEFAULTS: dict[str, Any] = {"weights": None, **{key: getattr(ExtractionConfig(), key)
                                                          for key in HLOC_EXTRACTION_OPTIONS}}
MATCHER_DEFAULTS: dict[str, Any] = dataclasses.asdict(MatcherConfig())  # every MatcherConfig option


def check_keys(conf: dict[str, Any], defaults: dict[str, Any], what: str) -> None:
    unknown = sorted(set(conf) - set(defaults) - {"name"})
    if unknown:
        raise HlocError(f"unknown d2_sfm {what} option(s) {unknown}; valid: {sorted(defaults)}")


def extractor_conf(multiscale: bool = EXTRACTOR_DEFAULTS["multiscale"], resize_max: int | None = 1600,
                   weights: str | None = EXTRACTOR_DEFAULTS["weights"],
                   max_keypoints: int | None = EXTRACTOR_DEFAULTS["max_keypoints"], **model: Any) -> dict[str, Any]:
    """An hloc extract_features conf for d2_sfm; the output name encodes the settings."""
    parts = ["feats-d2sfm", "ms" if multiscale else "ss"]
    if weights is not None:
        parts.append(Path(str(weights)).stem)  # a name, or a checkpoint file's stem
    if max_keypoints is not None:
        parts.append(f"n{max_keypoints}")
    if resize_max is not None:
        parts.append(f"r{resize_max}")
    model_conf = {"name": EXTRACTOR_NAME, "multiscale": multiscale, "weights": weights,
                  "max_keypoints": max_keypoints, **model}
    check_keys(model_conf, EXTRACTOR_DEFAULTS, "extractor")
    return {"output": "-".join(parts), "model": model_conf,
            "preprocessing": {"grayscale": False, "resize_max": resize_max}}


def matcher_conf(ratio_threshold: float | None = MATCHER_DEFAULTS["ratio_threshold"],
                 distance_threshold: float | None = MATCHER_DEFAULTS["distance_threshold"],
                 mutual_check: bool = MATCHER_DEFAULTS["mutual_check"]) -> dict[str, Any]:
    """An hloc match_features conf for d2_sfm's matcher; the output name encodes the settings."""
    parts = ["matches-d2sfm", "mnn" if mutual_check else "nn"]
    if ratio_threshold is not None:
        parts.append(f"ratio{ratio_threshold:g}")
    if distance_threshold is not None:
        parts.append(f"dist{distance_threshold:g}")
    return {"output": "-".join(parts),
            "model": {"name": MATCHER_NAME, "ratio_threshold": ratio_threshold,
                      "distance_threshold": distance_threshold, "mutual_check": mutual_check}}


# Ready-made confs (plain dicts, as hloc's own; copy.deepcopy one before changing it).
confs: dict[str, dict[str, Any]] = {
    "d2net-ss": extractor_conf(multiscale=False),  # output feats-d2sfm-ss-r1600
    "d2net-ms": extractor_conf(multiscale=True),  # output feats-d2sfm-ms-r1600
    "d2-mnn": matcher_conf(),  # output matches-d2sfm-mnn
}


def extraction_config(conf: dict[str, Any]) -> ExtractionConfig:
    """hloc model conf -> ExtractionConfig (no resizing: hloc resizes before the model)."""
    check_keys(conf, EXTRACTOR_DEFAULTS, "extractor")
    conf = {**EXTRACTOR_DEFAULTS, **conf}
    if conf["preprocessing"] not in ("caffe", "torch"):
        raise HlocError(f"preprocessing must be 'caffe' or 'torch', got {conf['preprocessing']!r}")
    options = {key: conf[key] for key in HLOC_EXTRACTION_OPTIONS}
    options.update(multiscale=bool(conf["multiscale"]), use_relu=bool(conf["use_relu"]),
                   edge_threshold=float(conf["edge_threshold"]), precision=str(conf["precision"]))
    return ExtractionConfig(max_edge=None, max_sum_edges=None, **options)


def matcher_config(conf: dict[str, Any]) -> MatcherConfig:
    check_keys(conf, MATCHER_DEFAULTS, "matcher")
    conf = {key: conf.get(key, default) for key, default in MATCHER_DEFAULTS.items()}
    return MatcherConfig(**{**conf, "mutual_check": bool(conf["mutual_check"]), "chunk_size": int(conf["chunk_size"])})


# --- the computations, usable without hloc --------------------------------------------------------

@torch.no_grad()
def extract_hloc_image(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, config: ExtractionConfig
                       ) -> dict[str, torch.Tensor]:
    """hloc's image (1, 3, H, W) RGB in [0, 1] (or (1, 1, H, W) grey) -> hloc's prediction dict.

    keypoints (1, N, 2) x, y in that image's pixels (integer = pixel centre), descriptors
    (1, 512, N) unit L2 norm, scores (1, N); all float32. Same computation as
    `D2Extractor.extract_network_input` on the image in 0..255.
    """
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        raise HlocError(f"expected hloc's image (1, 3, H, W) in [0, 1], got shape {tuple(image.shape)}")
    if image.shape[1] == 1:  # grayscale=True in hloc's preprocessing: repeat, as official D2-Net
        image = image.expand(-1, 3, -1, -1)
    network_input = preprocess(image.float() * 255.0, config.preprocessing)
    keypoints = extract_keypoints(net, network_input, config.scales, config.edge_threshold)
    keypoints = top_k(keypoints, config.max_keypoints)
    return {"keypoints": keypoints.xy.float()[None],
            "descriptors": keypoints.descriptors.float().T[None],
            "scores": keypoints.scores.float()[None]}


@torch.no_grad()
def match_hloc_pair(data: dict[str, torch.Tensor], config: MatcherConfig) -> dict[str, torch.Tensor]:
    """hloc's pair data (descriptors0/1 of shape (1, D, N)) -> matches0 (1, N0) int64 (-1: none),
    matching_scores0 (1, N0)."""
    desc0, desc1 = data["descriptors0"], data["descriptors1"]
    if desc0.ndim != 3 or desc1.ndim != 3 or desc0.shape[0] != 1 or desc1.shape[0] != 1:
        raise HlocError(f"expected descriptors (1, D, N), got {tuple(desc0.shape)} and {tuple(desc1.shape)}")
    if desc1.shape[-1] > HLOC_INT16_LIMIT:
        raise HlocError(f"an image has {desc1.shape[-1]} keypoints, but hloc stores match indices as "
                        f"int16 (at most {HLOC_INT16_LIMIT}); set max_keypoints in the extractor conf "
                        "or match with python -m d2_sfm.match (int32)")
    matches0, scores0 = match_descriptors(desc0[0].T.float(), desc1[0].T.float(), config)
    return {"matches0": matches0[None], "matching_scores0": scores0[None]}


# --- the hloc models, built on hloc's BaseModel at registration -----------------------------------

class ExtractorMethods:
    """Body of the hloc extractor; combined with hloc's BaseModel (or a stand-in in tests)."""
    default_conf = {"name": EXTRACTOR_NAME, **EXTRACTOR_DEFAULTS}
    required_inputs = ["image"]
    detection_noise = 1.0  # keypoint uncertainty in pixels of the image given to the model

    def _init(self, conf: dict[str, Any]) -> None:
        self.config = extraction_config(conf)
        self.net, self.weights = load_model(conf["weights"], use_relu=self.config.use_relu)
        logger.info("d2_sfm extractor for hloc: weights %s, %s", self.weights.name, self.config)

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # DenseNetwork: tiled, oneDNN-layout inference, identical numbers to calling the model
        precision = resolve_precision(self.config.precision, data["image"].device)
        network = DenseNetwork(self.net, self.config.tile_size, precision)
        return extract_hloc_image(network, data["image"], self.config)


class MatcherMethods:
    """Body of the hloc matcher: mutual nearest neighbours (d2_sfm.matching)."""
    default_conf = {"name": MATCHER_NAME, **MATCHER_DEFAULTS}
    required_inputs = ["descriptors0", "descriptors1"]

    def _init(self, conf: dict[str, Any]) -> None:
        self.config = matcher_config(conf)

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return match_hloc_pair(data, self.config)


def make_model_class(methods: type, base: type, module_name: str, class_name: str) -> type:
    """A subclass of `base` (hloc's BaseModel) with `methods`, defined 'in' module_name."""
    return type(class_name, (methods, base), {"__module__": module_name, "__qualname__": class_name,
                                              "__doc__": methods.__doc__})


def install_module(package: types.ModuleType, short_name: str, cls: type) -> types.ModuleType:
    """Make `<package>.<short_name>` importable, holding only `cls` (dynamic_load's contract)."""
    full_name = f"{package.__name__}.{short_name}"
    module = types.ModuleType(full_name, f"d2_sfm's hloc plugin ({cls.__name__}), registered at run time")
    module.__spec__ = importlib.machinery.ModuleSpec(full_name, loader=None)
    module.__package__ = package.__name__
    setattr(module, cls.__name__, cls)
    sys.modules[full_name] = module
    setattr(package, short_name, module)
    return module


def import_hloc() -> tuple[types.ModuleType, types.ModuleType, type, Any]:
    """(hloc.extractors, hloc.matchers, BaseModel, dynamic_load); HlocError with a hint if absent."""
    try:
        from hloc import extractors, matchers
        from hloc.utils.base_model import BaseModel, dynamic_load
    except ImportError as error:
        if (error.name or "").split(".")[0] == "hloc":
            raise HlocError(f"hloc is not installed ({error}); {INSTALL_HINT}") from None
        raise HlocError(f"hloc is installed but cannot be imported: {error}") from error
    return extractors, matchers, BaseModel, dynamic_load


_registered: dict[str, type] = {}


def register() -> dict[str, type]:
    """Register d2_sfm's extractor and matcher with hloc (idempotent); returns their classes.

    Afterwards conf["model"]["name"] == "d2_sfm" works in hloc.extract_features.main and
    hloc.match_features.main. Raises HlocError when hloc is missing.
    """
    extractors, matchers, base, dynamic_load = import_hloc()
    if not _registered or not issubclass(_registered["extractor"], base):
        _registered["extractor"] = make_model_class(
            ExtractorMethods, base, f"{extractors.__name__}.{EXTRACTOR_NAME}", "D2SfmExtractor")
        _registered["matcher"] = make_model_class(
            MatcherMethods, base, f"{matchers.__name__}.{MATCHER_NAME}", "D2SfmMatcher")
    install_module(extractors, EXTRACTOR_NAME, _registered["extractor"])
    install_module(matchers, MATCHER_NAME, _registered["matcher"])
    for root, name, key in ((extractors, EXTRACTOR_NAME, "extractor"), (matchers, MATCHER_NAME, "matcher")):
        if dynamic_load(root, name) is not _registered[key]:  # hloc's own lookup must find ours
            raise HlocError(f"registering {root.__name__}.{name} failed: hloc resolves another class")
    return dict(_registered)
