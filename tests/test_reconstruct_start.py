"""python -m d2_sfm.reconstruct starts without torch: --help and argument errors answer at once
(each check runs in a fresh interpreter, where nothing was imported before)."""
from __future__ import annotations

import subprocess
import sys

import pytest

RUN_HELP = """
import runpy, sys
sys.argv = ["reconstruct", *sys.argv[1:]]
try:
    runpy.run_module("d2_sfm.reconstruct", run_name="__main__")
except SystemExit as exit:
    print("exit", exit.code, file=sys.stderr)
print("torch" in sys.modules)
"""


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_importing_the_command_imports_no_torch():
    result = python("-c", "import sys, d2_sfm.reconstruct as r; r.build_parser(); print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_help_and_argument_errors_import_no_torch():
    shown = python("-c", RUN_HELP, "--help")
    assert "--mapper {incremental,global}" in shown.stdout and "exit 0" in shown.stderr
    assert shown.stdout.strip().endswith("False")
    wrong = python("-c", RUN_HELP, "--mapper", "glomap")
    assert "invalid choice: 'glomap'" in wrong.stderr and "exit 2" in wrong.stderr and "Traceback" not in wrong.stderr
    assert wrong.stdout.strip() == "False"


def test_public_names_still_resolve_lazily():
    from d2_sfm import reconstruct

    assert reconstruct.ReconstructionConfig().mapper.method == "incremental"
    assert "stability_check" in dir(reconstruct)
    with pytest.raises(AttributeError, match="no_such_name"):
        reconstruct.no_such_name  # noqa: B018
