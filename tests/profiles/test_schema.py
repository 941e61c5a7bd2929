"""training.control: {config, runs} in a profile."""
import pytest

from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.profiles.schema import ProfileError


def _demo_with(control) -> dict:
    cfg = dict(load_profile("demo"))
    return {**cfg, "training": {**cfg["training"], "control": control}}


def test_control_takes_runs_with_or_without_a_config():
    assert profile_from_dict(_demo_with({"runs": 6}), name="x").plan.control_seeds == [0, 1, 2, 3, 4, 5]
    plan = profile_from_dict(_demo_with({"config": "authors", "runs": 4}), name="x").plan
    assert plan.control == "authors" and plan.control_seeds == [0, 1, 2, 3]


@pytest.mark.parametrize("control, message", [
    ({"runz": 4}, "unknown key 'training.control.runz'; did you mean 'runs'?"),
    ({"runs": "4"}, "training.control.runs: input should be a valid integer"),
    ({"runs": 0}, "training.control.runs must be at least 1"),
])
def test_bad_control_runs_are_one_line(control, message):
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace("?", r"\?")):
        profile_from_dict(_demo_with(control), name="x")
