"""Fixtures of the localization tests (scenes built in localization_scenes.py)."""
from localization_scenes import model_scene  # noqa: F401  (a fixture)
