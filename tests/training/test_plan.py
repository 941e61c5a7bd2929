"""The label-permutation control's runs: a profile key, one run per seed by default."""
import pytest

from proloc_lib.profiles.loader import load_profile
from proloc_lib.training.plan import build_plan, control_seeds


def test_control_runs_default_to_the_training_seeds_and_extend_past_them():
    assert control_seeds([0, 1, 2], None) == [0, 1, 2]
    assert control_seeds([0, 1, 2, 3, 4], 10) == list(range(10))
    assert control_seeds([3, 7], 4) == [3, 7, 8, 9]            # further seeds never repeat a training seed
    assert control_seeds([0, 1, 2], 2) == [0, 1]
    with pytest.raises(ValueError, match="training.control.runs must be at least 1"):
        control_seeds([0], 0)


def test_plan_trains_one_control_run_per_control_seed():
    plan = build_plan({"seeds": [0, 1], "control": {"runs": 5}})
    assert plan.control == "corrected" and plan.control_seeds == [0, 1, 2, 3, 4]
    controls = [r for r in plan.all_training_runs(folds=0) if r["run_id"] == "control.permuted_labels"]
    assert [r["seed"] for r in controls] == [0, 1, 2, 3, 4]
    assert build_plan({"seeds": [0, 1], "control": False}).control_seeds == []
    assert build_plan({"seeds": [0, 1]}).control_seeds == [0, 1]


@pytest.mark.parametrize("profile, runs", [("demo", 3), ("smoke", 2), ("full", 10), ("full-extended", 10)])
def test_profiles_state_their_control_runs(profile, runs):
    assert len(load_profile(profile).plan.control_seeds) == runs
