"""Exit codes and output paths: OS errors become one line and exit 2; outputs are checked first."""
import logging
import os

import h5py
import pytest

from d2_sfm.cli import EXIT_BAD_INPUT, check_output_path, run_cli
from d2_sfm.errors import D2SfmError
from d2_sfm.paths import OutputPathError


def run(cli, caplog):
    with caplog.at_level(logging.ERROR):
        code = run_cli(cli, [])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return code, errors


def test_os_errors_become_one_line_and_exit_2(tmp_path, caplog):
    missing = tmp_path / "no" / "such" / "file.txt"

    def open_missing(argv):
        missing.read_text()
        return 0

    code, errors = run(open_missing, caplog)
    assert code == EXIT_BAD_INPUT == 2
    assert len(errors) == 1 and str(missing) in errors[0] and "\n" not in errors[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_full_disk_is_one_line(caplog):
    def write_full(argv):
        with open("/dev/full", "w") as handle:
            handle.write("x" * 10000)
            handle.flush()
        return 0

    code, errors = run(write_full, caplog)
    assert code == 2 and len(errors) == 1 and "No space left" in errors[0]


def test_h5py_errors_are_one_line(tmp_path, caplog):
    not_hdf5 = tmp_path / "features.h5"
    not_hdf5.write_text("this is not HDF5")

    def open_h5(argv):
        with h5py.File(not_hdf5, "r"):
            return 0

    code, errors = run(open_h5, caplog)
    assert code == 2 and len(errors) == 1 and "features.h5" in errors[0] and "\n" not in errors[0]


def test_other_exit_codes_are_unchanged(caplog):
    def bad_input(argv):
        raise D2SfmError("bad.txt: nope")

    assert run(bad_input, caplog)[0] == 2
    assert run_cli(lambda argv: 0, []) == 0
    assert run_cli(lambda argv: 3, []) == 3


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "new" / "deeper" / "f.H5", (".h5", ".hdf5"), "features") \
        == tmp_path / "new" / "deeper" / "f.H5"
    with pytest.raises(OutputPathError, match=r"features .*f\.txt.*unknown extension"):
        check_output_path(tmp_path / "f.txt", (".h5", ".hdf5"), "features")
    with pytest.raises(OutputPathError, match="unknown extension"):
        check_output_path(tmp_path / "features", (".h5", ".hdf5"), "features")
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(OutputPathError, match="dir.h5 is a folder"):
        check_output_path(tmp_path / "dir.h5", (".h5",), "matches")
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(OutputPathError, match="not a folder"):
        check_output_path(tmp_path / "plain" / "f.h5", (".h5",), "matches")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_output_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_path(folder / "f.h5", (".h5",), "features")
    finally:
        folder.chmod(0o755)
