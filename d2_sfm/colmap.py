"""The one place d2_sfm imports pycolmap: `from .colmap import pycolmap`.

Why a shim: the pycolmap 4.2.1 wheel, imported *before* cv2, makes every later PNG write by cv2
(`cv2.imwrite`, `cv2.imencode(".png")`) abort the process with "free(): invalid pointer" (a zlib
symbol clash between the two wheels). Importing cv2 first avoids it, whatever module the user or a
test happens to import first. See /work/shared/reference/pycolmap_4_api_tour.py (the NOTE at its
top). Modules that use cv2 themselves still import it as usual.
"""
from __future__ import annotations

import cv2  # noqa: F401  (must come first: see the module docstring)
import pycolmap

__all__ = ["pycolmap"]
