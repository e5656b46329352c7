"""Training D2-Net: train-time network, soft detection, loss, data (synthetic pairs, MegaDepth), trainer.

Nothing here is imported by the extraction / SfM code paths; `python -m d2_sfm.train` is the CLI.
"""
