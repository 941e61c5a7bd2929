"""The tier estimate: the dry run's published-loop runs, timed seed by seed, replaced by what
bench-seeds measured for all seeds at once (bench.estimate.tier_estimate); hand-made figures."""
import pytest

from proloc_lib.bench.estimate import tier_estimate


def _dry():
    runs = [{"run": "fusion.authors", "config": "authors", "seed": s, "estimated_seconds": 7200.0} for s in range(5)]
    runs += [{"run": "fusion.corrected", "config": "corrected", "seed": s, "estimated_seconds": 360.0} for s in range(5)]
    total = sum(r["estimated_seconds"] for r in runs)
    return {"runs": runs, "estimated_training_seconds": total, "estimated_training_hours": total / 3600,
            "n_train": 3000, "n_val": 900, "device_name": "GPU X"}


def test_the_published_runs_take_the_measured_time_plus_their_validation():
    seeds = {"config": "authors", "best_mode": "stacked+captured",
             "modes": {"eager": {"published_seeds_hours": 9.0}, "stacked+captured": {"published_seeds_hours": 0.5}}}
    te = tier_estimate(_dry(), seeds)
    assert te["published_runs"] == 5 and te["published_mode"] == "stacked+captured"
    assert te["published_hours_one_by_one"] == pytest.approx(10.0)          # 5 x 2 h
    assert te["published_hours_measured"] == pytest.approx(0.5 * (1 + 900 / 9000))   # + a third of a step per val sample
    assert te["tier_hours_one_by_one"] == pytest.approx(10.5)
    assert te["tier_hours"] == pytest.approx(10.5 - 10.0 + 0.55)


def test_nothing_to_replace_is_an_error():
    with pytest.raises(ValueError, match="no fusion.authors runs"):
        tier_estimate({**_dry(), "runs": []}, {"config": "authors", "best_mode": "eager",
                                               "modes": {"eager": {"published_seeds_hours": 1.0}}})
