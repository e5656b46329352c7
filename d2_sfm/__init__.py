"""d2_sfm: D2-Net local features in COLMAP-compatible SfM and visual localization."""
__version__ = "0.1.0"
