"""The run seed moves every training seed of a plan (``Plan.for_run_seed``): seed 0 is the profile's
plan; seed s adds s * SEED_STRIDE to each training and re-split seed, switches and config hashes unchanged."""
from __future__ import annotations

from proloc_lib.profiles.loader import load_profile
from proloc_lib.stages.training import TrainingStage
from proloc_lib.training.plan import SEED_STRIDE


def test_run_seed_zero_is_the_profiles_plan():
    plan = load_profile("demo").plan
    assert plan.for_run_seed(0) is plan and plan.seeds == [0, 1, 2] and plan.seed_offset == 0


def test_run_seed_moves_every_training_and_resplit_seed():
    plan = load_profile("full-extended").plan
    moved = plan.for_run_seed(2)
    assert moved.seeds == [s + 2 * SEED_STRIDE for s in plan.seeds]
    assert [r["seed"] for r in moved.runs] == [r["seed"] + 2 * SEED_STRIDE for r in plan.runs]
    assert [(r["run_id"], r["train"].hash()) for r in moved.runs] == [(r["run_id"], r["train"].hash()) for r in plan.runs]
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
