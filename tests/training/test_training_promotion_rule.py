"""The promotion rule of pipelines/promotion.py on hand-made results (the full run needs minutes)."""
import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "pipelines" / "promotion.py"


@pytest.fixture(scope="module")
def promotion():
    spec = importlib.util.spec_from_file_location("promotion_under_test", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def results(new_mma=0.5, new_registered=16, new_rotation=0.5, new_night=4):
    sfm = {"temple": {"registered": 8, "images": 16, "rotation_median": 1.0, "status": "ok"}}
    return {
        "homography": {"candidate": {"graffiti 1-2": new_mma, "evd adam": 0.0},
                       "incumbent": {"graffiti 1-2": 0.3, "evd adam": 0.0}},
        "sfm": {"candidate": {"temple": {**sfm["temple"], "registered": new_registered,
                                         "rotation_median": new_rotation}}, "incumbent": sfm},
        "localization": {"candidate": {"night_localized": new_night, "night_queries": 4},
                         "incumbent": {"night_localized": 3, "night_queries": 4}},
    }


def test_promotes_only_when_every_criterion_holds(promotion):
    assert all(p for _, p, _ in promotion.verdict(results(), "candidate", "incumbent"))
    for worse in (dict(new_mma=0.3), dict(new_registered=7), dict(new_rotation=1.0), dict(new_night=2)):
        checks = promotion.verdict(results(**worse), "candidate", "incumbent")
        assert [p for _, p, _ in checks].count(False) == 1, worse
    text = promotion.table(results(new_night=2), ["candidate", "incumbent"], "candidate", "incumbent")
    assert "KEEP incumbent" in text and "FAIL" in text


def test_parts_not_run_never_promote(promotion):
    partial = {"homography": results()["homography"]}
    checks = promotion.verdict(partial, "candidate", "incumbent")
    assert [p for _, p, _ in checks] == [True, None, None]
    assert "incomplete run" in promotion.table(partial, ["candidate", "incumbent"], "candidate", "incumbent")


def test_unknown_part_is_a_clear_error(promotion, tmp_path, caplog):
    code = promotion.run_cli(promotion.cli, ["--candidate", "hed_vgg16", "--parts", "homography,speed",
                                             "--output", str(tmp_path / "out")])
    assert code == 2
    assert "speed" in caplog.text
