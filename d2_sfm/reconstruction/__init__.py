"""The pieces of `python -m d2_sfm.reconstruct` (Structure-from-Motion with D2-Net features).

Modules, in the order a run uses them:
- `layout`: the output folder (which file each step writes), `steps.json` bookkeeping, and the
  error that says why nothing usable could be built.
- `pipeline`: `ReconstructionConfig`, the `Pipeline` that chains the steps (extract, pairs, match,
  database, map; each resumable), and `main()`.
- `mapping`: pycolmap's incremental or global (GLOMAP) mapper, and the best model of a run.
- `reliability`: registrations that rest on weak evidence, implausible intrinsics.
- `stability`: mapping again from other initial pairs; a model that moves with its start is wrong.
- `summary`: what a finished run reports (`summary.json`, the lines printed, pose errors).
The command line is in `d2_sfm/reconstruct.py`, which also re-exports the public names.
"""

# Shared by the command line and `mapping`; here, so that `--help` needs neither pycolmap nor torch.
MAPPERS = ("incremental", "global")
