"""The training plan: every run named by a registry id, options checked before any work; the
label-permutation control's runs (a profile key, one run per seed by default); the run seed moves
every training seed (``Plan.for_run_seed``: seed 0 is the profile's plan, seed s adds s * SEED_STRIDE
to each training, control and re-split seed, switches and config hashes unchanged)."""
import pytest

from proloc_lib.core import runs
from proloc_lib.profiles.loader import load_profile
from proloc_lib.stages.training import TrainingStage
from proloc_lib.training.plan import SEED_STRIDE, build_plan, control_seeds


def test_plan_names_every_run_by_a_registry_id_and_checks_options_up_front(tiny_profile):
    plan = tiny_profile().plan
    ids = [r["run_id"] for r in plan.runs]
    assert ids == ["fusion.corrected", "fusion.authors"] * 2 + ["ablation.reference", "ablation.mask_off",
                                                                 "ablation.augreg"]
    assert all(runs.parse(i) for i in ids)
    by_id = {r["run_id"]: r for r in plan.runs}
    assert by_id["ablation.augreg"]["image_variant"] == "augreg" and "image_variant" not in by_id["ablation.mask_off"]
    assert (by_id["ablation.mask_off"]["train"].apply_mask is False
            and by_id["ablation.mask_off"]["train"].max_epochs == 1)
    # corrected and authors run with the same seeds (pairs)
    assert sorted(r["seed"] for r in plan.runs if r["config"] == "authors" and "ablation" not in r) == [0, 1]
    assert (plan.cross_validation, plan.control, plan.resplits["config"]) == ("corrected", "corrected", "corrected")
    assert runs.display_name("ablation.mask_off") == "ablation: mask off"
    assert runs.display_name("resplit.stratified") == "fusion (corrected), stratified re-splits"
    with pytest.raises(ValueError, match="reserved"):
        tiny_profile(ablations={"reference": {"apply_mask": False}}).plan
    with pytest.raises(ValueError, match="twice"):
        tiny_profile(ablations={"mask off": {}, "mask_off": {}}).plan
    with pytest.raises(ValueError, match="repeat"):
        tiny_profile(resplits={"repeat": 2}).plan
    with pytest.raises(ValueError, match="learning_rate"):
        tiny_profile(ablations={"x": {"learning_rate": 1}}).plan
    assert tiny_profile(control=False).plan.control is None
    assert tiny_profile(control=True, cross_validation=True).plan.cross_validation == "corrected"
    with pytest.raises(ValueError, match="training.control"):
        tiny_profile(control={"confg": "corrected"}).plan


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


def test_run_seed_zero_is_the_profiles_plan():
    plan = load_profile("demo").plan
    assert plan.for_run_seed(0) is plan and plan.seeds == [0, 1, 2] and plan.seed_offset == 0


def test_run_seed_moves_every_training_and_resplit_seed():
    plan = load_profile("full-extended").plan
    moved = plan.for_run_seed(2)
    assert moved.seeds == [s + 2 * SEED_STRIDE for s in plan.seeds]
    assert [r["seed"] for r in moved.runs] == [r["seed"] + 2 * SEED_STRIDE for r in plan.runs]
    assert moved.control_seeds == [s + 2 * SEED_STRIDE for s in plan.control_seeds]
    assert ([(r["run_id"], r["train"].hash()) for r in moved.runs]
            == [(r["run_id"], r["train"].hash()) for r in plan.runs])
    before = plan.all_training_runs(folds=5)
    after = moved.all_training_runs(folds=5)
    assert [r["seed"] for r in after] == [r["seed"] + 2 * SEED_STRIDE for r in before]
    assert {r["run_id"] for r in after if r["run_id"].startswith("resplit.")}      # re-splits moved too
    assert moved.for_run_seed(0).seeds == plan.seeds                              # and back
    # the replicates share no training seed
    assert not set(plan.for_run_seed(1).seeds) & set(plan.seeds)


def test_stage_03_parameters_record_the_moved_seeds():
    cfg = load_profile("demo")
    p0 = TrainingStage.parameters_for(cfg, seed=0, device="cpu")
    p1 = TrainingStage.parameters_for(cfg, seed=1, device="cpu")
    assert sorted({r["seed"] for r in p0["plan"]}) == [0, 1, 2]
    assert sorted({r["seed"] for r in p1["plan"]}) == [1000, 1001, 1002] and p1["seed"] == 1
    assert [r["config_hash"] for r in p0["plan"]] == [r["config_hash"] for r in p1["plan"]]
