"""The training plan: every run named by a registry id, options checked before any work."""
import pytest

from proloc_lib.core import runs


def test_plan_names_every_run_by_a_registry_id_and_checks_options_up_front(tiny_profile):
    plan = tiny_profile().plan
    ids = [r["run_id"] for r in plan.runs]
    assert ids == ["fusion.corrected", "fusion.authors"] * 2 + ["ablation.reference", "ablation.mask_off",
                                                                 "ablation.augreg"]
    assert all(runs.parse(i) for i in ids)
    by_id = {r["run_id"]: r for r in plan.runs}
    assert by_id["ablation.augreg"]["image_variant"] == "augreg" and "image_variant" not in by_id["ablation.mask_off"]
    assert by_id["ablation.mask_off"]["train"].apply_mask is False and by_id["ablation.mask_off"]["train"].max_epochs == 1
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
