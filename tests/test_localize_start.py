"""`python -m d2_sfm.localize` starts at once: importing it loads neither torch nor pycolmap (they
load when a run starts); --help, argument errors and a missing dataset answer before they load."""
from __future__ import annotations

import subprocess
import sys


def loaded_after(code: str) -> list[str]:
    """Which of the heavy libraries a fresh interpreter has imported after running `code`."""
    probe = code + "\nimport sys\nprint('loaded:', *(m for m in ('torch', 'pycolmap', 'cv2') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split()[1:]


def test_importing_localize_loads_no_torch_nor_pycolmap():
    assert loaded_after("import d2_sfm.localize") == []


def test_a_missing_dataset_is_reported_before_torch_loads(tmp_path):
    missing = tmp_path / "nowhere"
    code = ("from d2_sfm import localize\n"
            "from d2_sfm.datasets import DatasetError\n"
            "try:\n"
            f"    localize.main('aachen', {str(missing)!r})\n"
            "except DatasetError as error:\n"
            f"    assert {str(missing)!r} in str(error) and 'synthetic' in str(error), error\n"
            "else:\n"
            "    raise SystemExit('no error for a missing dataset')")
    assert loaded_after(code) == []


def test_the_command_line_answers_help_and_errors_without_torch(tmp_path):
    missing = tmp_path / "nowhere"
    code = ("from d2_sfm import localize\n"
            "from d2_sfm.cli import run_cli\n"
            f"assert run_cli(localize.cli, ['--dataset', 'aachen', '--root', {str(missing)!r}]) == 2\n"
            "assert run_cli(localize.cli, ['--dataset', 'aachen', '--num-retrieved', '0', '--root', '.']) == 2\n"
            "for argv in (['--help'], ['--dataset', 'nowhere']):\n"
            "    try:\n"
            "        localize.cli(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "    else:\n"
            "        raise AssertionError(argv)")
    assert loaded_after(code) == []
