"""Reviewer statistics: bootstrap intervals, calibration, seed-paired differences, re-split
variance, the permutation control; and what each claims, checked on simulated data whose truth
is known: the control's bound and detectable excess, the one interval over seeds and proteins,
Holm's correction, the ECE floor."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score

from proloc_lib.evaluation import metrics, statistics

LABELS = ["a", "b", "c"]  # the three labels of the toy_scores fixture


def _pred(model, y, p, seed=0, t=0.5, split="test", level="protein"):
    df = pd.DataFrame({"id": [f"P{i}" for i in range(len(y))], "protein_id": [f"P{i}" for i in range(len(y))],
                       "model": model, "seed": seed, "split": split, "level": level})
    for j, lab in enumerate(LABELS):
        df[f"y:{lab}"], df[f"p:{lab}"], df[f"t:{lab}"] = y[:, j], p[:, j], t
    return df


def test_weighted_average_precision_equals_sklearn_with_weights():
    rng = np.random.default_rng(1)
    y = (rng.random(40) < 0.3).astype(int)
    s = np.round(rng.random(40), 1)                   # ties on purpose
    w = rng.integers(0, 3, size=(5, 40))
    got = statistics.weighted_average_precision(y, s, w)
    for b in range(5):
        assert got[b] == pytest.approx(average_precision_score(y, s, sample_weight=w[b]))
    assert np.isnan(statistics.weighted_average_precision(y, s, (1 - y)[None])[0])   # no positive drawn


def test_bootstrap_per_label_intervals_cover_the_point_and_shrink_with_n(toy_scores):
    y, p = toy_scores(n=60)
    small = statistics.bootstrap_per_label(_pred("fusion.corrected", y, p), LABELS, n_boot=300)
    y2, p2 = toy_scores(n=600)
    big = statistics.bootstrap_per_label(_pred("fusion.corrected", y2, p2), LABELS, n_boot=300)
    assert set(small["metric"]) == {"f1", "average_precision"} and len(small) == 6
    assert (small["ci_low"] <= small["value"] + 1e-12).all() and (small["value"] <= small["ci_high"] + 1e-12).all()
    assert (small["ci_high"] - small["ci_low"] > 0.02).all()
    ap_a = small[(small["label"] == "a") & (small["metric"] == "average_precision")]["value"].iloc[0]
    assert ap_a == pytest.approx(average_precision_score(y[:, 0], p[:, 0]))

    def width(d):
        return (d["ci_high"] - d["ci_low"]).mean()
    assert width(big) < width(small) / 2                 # ~ 1/sqrt(n): 10x the proteins, ~3x narrower


def test_bootstrap_label_without_positive_is_undefined(toy_scores):
    y, p = toy_scores(n=50)
    y[:, 2] = 0
    out = statistics.bootstrap_per_label(_pred("m", y, p), LABELS, n_boot=50)
    c = out[out["label"] == "c"]
    assert c["value"].isna().all() and c["ci_low"].isna().all()


def test_calibration_table_separates_calibrated_from_overconfident():
    rng = np.random.default_rng(3)
    p = rng.random((4000, 3))
    y = (rng.random((4000, 3)) < p).astype(int)         # calibrated by construction
    over = np.where(p > 0.5, 0.99, 0.01)                  # same ranking, overconfident
    pred = pd.concat([_pred("calibrated", y, p), _pred("overconfident", y, over)])
    tab = statistics.calibration_table(pred, LABELS).set_index("model")
    assert tab.loc["calibrated", "ece"] < 0.03
    assert tab.loc["overconfident", "ece"] > 0.2
    assert tab.loc["calibrated", "brier"] < tab.loc["overconfident", "brier"]


def _results(model, seed, f1, fold=None):
    return pd.DataFrame([{"model": model, "config": "", "config_hash": "", "seed": seed, "fold": fold,
                          "level": "protein", "split": "test", "label": "overall", "metric": "f1", "value": f1}])


def test_seed_paired_differences_pair_by_seed():
    a = [0.80, 0.82, 0.78, 0.81, 0.79]
    b = [0.70, 0.75, 0.69, 0.74, 0.72]
    res = pd.concat([_results("fusion.corrected", s, v) for s, v in enumerate(a)]
                    + [_results("fusion.authors", s, v) for s, v in enumerate(b)]
                    + [_results("fusion.authors", 9, 0.0)])             # unpaired seed: ignored
    out = statistics.seed_paired_differences(res, metric_names=("f1",)).iloc[0]
    d = np.subtract(a, b)
    assert out["n_seeds"] == 5 and out["mean_difference"] == pytest.approx(d.mean())
    assert out["sd"] == pytest.approx(d.std(ddof=1))
    # t interval, 4 degrees of freedom: t_0.975 = 2.776
    half = 2.7764451 * d.std(ddof=1) / math.sqrt(5)
    assert out["ci_low"] == pytest.approx(d.mean() - half, rel=1e-5)
    assert out["ci_high"] == pytest.approx(d.mean() + half, rel=1e-5)


def test_resplit_summary_is_over_splits_not_seeds():
    rows = [_results("cv.corrected", seed, 0.5 + 0.1 * fold + 0.01 * seed, fold=fold)
            for fold in range(3) for seed in range(2)]
    out = statistics.resplit_summary(pd.concat(rows), by="fold").iloc[0]
    per_split = [0.505, 0.605, 0.705]                    # seeds averaged within a split first
    assert out["n_splits"] == 3 and out["mean"] == pytest.approx(np.mean(per_split))
    assert out["sd"] == pytest.approx(np.std(per_split, ddof=1))
    assert out["ci_low"] < out["mean"] < out["ci_high"]


def test_permutation_control_finds_no_leak_in_noise_and_flags_a_real_model():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 3)) < [0.5, 0.3, 0.2]).astype(int)
    noise = rng.random((200, 3))
    informed = np.clip(0.6 * y + 0.4 * noise, 0, 1)
    pred = pd.concat([_pred("control.permuted_labels", y, noise), _pred("fusion.corrected", y, informed)])
    ctl = statistics.permutation_control(pred, LABELS, n_perm=300)
    assert not ctl["leak_detected"]
    per = ctl["per_label"].set_index("label")
    # the null's mean AP is about the label's prevalence (the label-frequency expectation)
    assert np.allclose(per["null_mean"], per["prevalence"], atol=0.06)
    real = statistics.permutation_control(pred, LABELS, control="fusion.corrected", n_perm=300)
    assert real["leak_detected"] and real["macro_ap"] > real["macro_ap_null_high"]


def test_permutation_control_over_several_runs_asks_for_a_systematic_excess():
    """Several control runs (one per seed): a leak only where they beat their nulls systematically;
    a run whose scores cluster by class may sit above its own shuffle null by chance."""
    rng = np.random.default_rng(7)
    y = (rng.random((120, 3)) < [0.5, 0.3, 0.2]).astype(int)
    noise = [rng.random((120, 3)) for _ in range(4)]
    informed = [np.clip(0.5 * y + 0.5 * rng.random((120, 3)), 0, 1) for _ in range(4)]
    pred = pd.concat([_pred("control.permuted_labels", y, p, seed=s) for s, p in enumerate(noise)]
                     + [_pred("fusion.corrected", y, p, seed=s) for s, p in enumerate(informed)])
    ctl = statistics.permutation_control(pred, LABELS, n_perm=100)
    assert ctl["n_runs"] == 4 and not ctl["leak_detected"]
    assert ctl["macro_ap_excess"] <= ctl["macro_ap_excess_upper"] and ctl["macro_ap_excess_upper"] >= 0
    real = statistics.permutation_control(pred, LABELS, control="fusion.corrected", n_perm=100)
    assert real["n_runs"] == 4 and real["leak_detected"] and real["macro_ap_excess"] > real["macro_ap_detectable"]


# ---------------------------------------------------------------------------- what the statistics claim

DEMO_SPREAD = 0.083   # run-to-run sd of the demo control's macro-AP excess (3 runs: t interval [-0.271, 0.144])


def _with_sd(rng, n, sd):
    """n values with sample mean 0 and sample sd exactly ``sd``."""
    x = rng.normal(size=n)
    return (x - x.mean()) / x.std(ddof=1) * sd


# ---------------------------------------------------------------------------- the control's bound

@pytest.mark.parametrize("runs", [3, 10])
@pytest.mark.parametrize("true_excess", [0.0, 0.16])
def test_upper_bound_covers_the_true_excess_at_the_stated_rate(runs, true_excess):
    rng = np.random.default_rng(runs)
    sims = rng.normal(true_excess, DEMO_SPREAD, size=(4000, runs))     # 4000 repeats of `runs` control runs
    bound = statistics.excess_bound(sims)
    coverage = np.mean(bound["excess_upper"] >= true_excess)
    assert abs(coverage - 0.95) < 0.015                                 # binomial sd 0.0034
    if true_excess == 0:
        assert abs(np.mean(bound["leak_detected"]) - 0.05) < 0.015      # the false-alarm rate is the test's level


@pytest.mark.parametrize("runs", [3, 5, 10])
def test_the_detectable_excess_is_detected_with_the_stated_power(runs):
    rng = np.random.default_rng(1)
    # the detectable excess at a run-to-run sd of exactly DEMO_SPREAD
    detectable = float(statistics.excess_bound(_with_sd(rng, runs, DEMO_SPREAD))["detectable"])
    t = stats.t.ppf(0.95, runs - 1)
    assert stats.nct.sf(t, runs - 1, detectable / (DEMO_SPREAD / np.sqrt(runs))) == pytest.approx(0.8, abs=1e-6)
    hits = statistics.excess_bound(rng.normal(detectable, DEMO_SPREAD, size=(20000, runs)))["leak_detected"]
    assert abs(np.mean(hits) - 0.8) < 0.015                              # binomial sd 0.0028


def test_three_runs_cannot_vouch_against_a_leak_of_016_and_ten_can():
    """A macro-AP leak of 0.16 at the demo's spread: 3 runs miss it often and say so (their
    detectable excess is larger than 0.16); 10 runs detect it nearly always."""
    rng = np.random.default_rng(2)
    three = statistics.excess_bound(rng.normal(0.16, DEMO_SPREAD, size=(4000, 3)))
    ten = statistics.excess_bound(rng.normal(0.16, DEMO_SPREAD, size=(4000, 10)))
    assert np.mean(three["leak_detected"]) < 0.75 and np.mean(ten["leak_detected"]) > 0.95
    # what each says it can detect, at exactly the demo's spread
    assert statistics.excess_bound(_with_sd(rng, 3, DEMO_SPREAD))["detectable"] > 0.16
    assert statistics.excess_bound(_with_sd(rng, 10, DEMO_SPREAD))["detectable"] < 0.08
    missed = ~three["leak_detected"]          # when 3 runs miss the leak, their bound still covers it mostly
    assert np.mean(three["excess_upper"][missed] >= 0.16) > 0.85


def test_one_run_gives_no_bound():
    out = statistics.excess_bound([0.05])
    assert out["n_runs"] == 1 and np.isnan(out["excess_upper"]) and np.isnan(out["detectable"])


def _control_runs(rng, y, leak, n_runs):
    """Control predictions whose scores carry ``leak`` of the true labels (0: none) plus run noise."""
    return pd.concat([_pred("control.permuted_labels", y, np.clip(leak * y + (1 - leak) * rng.random(y.shape), 0, 1),
                            seed=s) for s in range(n_runs)])


def test_permutation_control_flags_a_large_leak_and_bounds_no_leak():
    rng = np.random.default_rng(3)
    y = (rng.random((150, 3)) < [0.5, 0.3, 0.2]).astype(int)
    clean = statistics.permutation_control(_control_runs(rng, y, 0.0, 10), LABELS, n_perm=100)
    assert clean["n_runs"] == 10 and not clean["leak_detected"]
    assert clean["macro_ap_excess"] <= clean["macro_ap_excess_upper"] and clean["macro_ap_excess_upper"] > 0
    assert 0 < clean["macro_ap_detectable"] < 0.1            # 10 runs on 150 proteins: small leaks are visible
    leaky = statistics.permutation_control(_control_runs(rng, y, 0.3, 10), LABELS, n_perm=100)
    assert leaky["leak_detected"] and leaky["macro_ap_excess"] > leaky["macro_ap_detectable"]
    assert leaky["macro_ap_p_value"] < 1e-4
    one = statistics.permutation_control(_control_runs(rng, y, 0.3, 1), LABELS, n_perm=100)
    assert one["n_runs"] == 1 and one["leak_detected"] and np.isnan(one["macro_ap_excess_upper"])


# ---------------------------------------------------------------------------- corrected vs authors

def _crossed(rng, n_seeds, n_proteins, seed_sd, protein_sd, noise_sd, mean=0.1):
    """Seeds x proteins differences: every seed scores the same proteins (protein effects shared)."""
    return (mean + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, protein_sd, (1, n_proteins))
            + rng.normal(0, noise_sd, (n_seeds, n_proteins)))


def test_one_interval_over_seeds_and_proteins_covers_at_the_nominal_rate():
    rng = np.random.default_rng(4)
    hits, first_seed_hits = [], []
    for r in range(300):
        d = _crossed(rng, 5, 60, seed_sd=0.05, protein_sd=0.3, noise_sd=0.2)
        out = statistics.hierarchical_bootstrap(d, n_boot=400, seed=r)
        hits.append(out["ci_low"] <= 0.1 <= out["ci_high"])
        boots = d[0][rng.integers(0, 60, (400, 60))].mean(1)               # one seed, proteins only
        lo, hi = np.quantile(boots, [0.025, 0.975])
        first_seed_hits.append(lo <= 0.1 <= hi)
    assert 0.92 <= np.mean(hits) <= 0.99                                 # binomial sd 0.013 at 0.95
    assert np.mean(first_seed_hits) < np.mean(hits) - 0.03               # one seed ignores training noise


def test_drawing_proteins_anew_within_each_seed_would_be_too_narrow():
    """Why the protein draw is shared by the seeds: the same proteins in every seed make the
    protein variation count once, not averaged down by the number of seeds."""
    rng = np.random.default_rng(5)
    d = _crossed(rng, 5, 80, seed_sd=0.0, protein_sd=0.3, noise_sd=0.05)
    out = statistics.hierarchical_bootstrap(d, n_boot=2000, seed=0)
    true_sd = np.sqrt(0.3 ** 2 / 80 + 0.05 ** 2 / 400)          # sd of the mean: protein effects count once
    assert (out["ci_high"] - out["ci_low"]) / (2 * 1.96) == pytest.approx(true_sd, rel=0.25)
    seeds = rng.integers(0, 5, (2000, 5))                        # nested: proteins drawn anew for each seed
    nested = d[seeds[:, :, None], rng.integers(0, 80, (2000, 5, 80))].mean((1, 2))
    assert nested.std() < 0.6 * true_sd


def test_main_comparison_pairs_runs_by_seed_and_protein():
    rng = np.random.default_rng(6)
    y = (rng.random((40, 3)) < 0.4).astype(int)
    frames, diffs = [], []
    for s in range(3):
        good = np.clip(0.6 * y + 0.4 * rng.random(y.shape), 0, 1)
        poor = rng.random(y.shape)
        frames += [_pred("fusion.corrected", y, good, seed=s), _pred("fusion.authors", y, poor, seed=s)]
        diffs.append(metrics.sample_f1(y, good >= 0.5) - metrics.sample_f1(y, poor >= 0.5))
    frames.append(_pred("fusion.authors", y, rng.random(y.shape), seed=9))   # unpaired seed: left out
    out = statistics.main_comparison(pd.concat(frames), LABELS, n_boot=500)
    assert out["seeds"] == [0, 1, 2] and out["n_seeds"] == 3 and out["n_proteins"] == 40
    assert out["mean_difference"] == pytest.approx(np.mean(diffs))
    assert 0 < out["ci_low"] < out["mean_difference"] < out["ci_high"] and out["p_value"] < 0.01
    assert statistics.main_comparison(pd.concat(frames[:1]), LABELS) == {}    # no authors run: nothing


# ---------------------------------------------------------------------------- Holm

def test_holm_adjusts_in_step_down_order():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(statistics.holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    assert statistics.holm([0.5, 0.6]).tolist() == [1.0, 1.0]          # capped at 1
    assert statistics.holm([0.02]).tolist() == [0.02]                  # one comparison: unchanged


def test_holm_keeps_the_family_wise_error_rate():
    rng = np.random.default_rng(7)
    p = rng.random((20000, 8))                                          # 8 true null comparisons
    adjusted = np.apply_along_axis(statistics.holm, 1, p)
    assert np.mean((adjusted < 0.05).any(1)) <= 0.05 + 0.004
    assert np.mean((p < 0.05).any(1)) > 0.3                             # unadjusted: 1 - 0.95^8 = 0.34


def test_bootstrap_difference_p_value_is_not_limited_by_the_resamples():
    rng = np.random.default_rng(8)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    a = _pred("fusion.corrected", y, np.clip(0.7 * y + 0.3 * rng.random(y.shape), 0, 1))
    b = _pred("baseline.label_frequency", y, rng.random(y.shape))
    out = statistics.bootstrap_f1_difference(a, b, LABELS, n_boot=200)
    assert 0 <= out["p_value"] < 1 / 201                               # finer than 1/n_boot
    same = statistics.bootstrap_f1_difference(a, a, LABELS, n_boot=200)
    assert same["p_value"] == 1.0


# ---------------------------------------------------------------------------- ECE floor

def test_ece_floor_of_one_constant_forecast_is_the_binomial_mean_absolute_deviation():
    n, q = 1000, 0.3
    k = np.arange(n + 1)
    expected = float(np.sum(stats.binom.pmf(k, n, q) * np.abs(k / n - q)))       # ~ sqrt(2/pi) sqrt(q(1-q)/n)
    floor = statistics.ece_floor(np.full(n, q), n_sim=4000, rng=np.random.default_rng(0))
    assert floor.mean() == pytest.approx(expected, rel=0.03)
    assert np.quantile(floor, 0.95) > floor.mean()


def test_calibration_table_says_when_an_ece_is_within_noise():
    rng = np.random.default_rng(9)
    small = rng.random((40, 3))
    big = rng.random((640, 3))
    calibrated = [_pred("calibrated", (rng.random(p.shape) < p).astype(int), p, seed=s)
                  for s, p in enumerate([small] * 3)]
    tab = statistics.calibration_table(pd.concat(calibrated), LABELS, n_sim=500).set_index("model")
    row = tab.loc["calibrated"]
    assert row["ece"] > 0.03                            # a calibrated model on 40 proteins is not at 0 ...
    assert row["ece"] < row["ece_floor_p95"]            # ... but within its floor
    over = _pred("overconfident", (rng.random(small.shape) < small).astype(int), np.where(small > 0.5, 0.99, 0.01))
    o = statistics.calibration_table(over, LABELS, n_sim=500).iloc[0]
    assert o["ece"] > o["ece_floor_p95"] + 0.1
    # the floor shrinks as 1/sqrt(n): 16x the proteins, about a quarter
    f_small = statistics.ece_floor(small, n_sim=500).mean()
    f_big = statistics.ece_floor(big, n_sim=500).mean()
    assert f_big / f_small == pytest.approx(0.25, abs=0.06)


def test_calibrated_forecasts_stay_under_the_floor_p95_at_about_the_stated_rate():
    rng = np.random.default_rng(10)
    p = rng.random((50, 3))
    floor = statistics.ece_floor(p, n_sim=2000, rng=rng)
    observed = [metrics.calibration((rng.random(p.shape) < p).astype(int), p)["ece"] for _ in range(1000)]
    assert abs(np.mean(np.array(observed) <= np.quantile(floor, 0.95)) - 0.95) < 0.025


# -- intervals over too few proteins ---------------------------------------------------------------
TWO = ["a", "b"]


def _two_label_pred(model: str, y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"protein_id": [f"P{i}" for i in range(len(y))], "model": model, "seed": 0,
                       "split": "test", "level": "protein"})
    for j, lab in enumerate(TWO):
        df[f"y:{lab}"], df[f"p:{lab}"], df[f"t:{lab}"] = y[:, j], p[:, j], 0.5
    return df


def test_one_test_protein_gives_a_degenerate_interval_and_a_one_line_warning():
    pred = _two_label_pred("m", np.array([[1, 0]]), np.array([[0.9, 0.2]]))
    with pytest.warns(UserWarning) as record:
        out = statistics.bootstrap_per_label(pred, TWO, n_boot=50)
    f1 = out[(out["label"] == "a") & (out["metric"] == "f1")].iloc[0]
    assert (f1["value"], f1["ci_low"], f1["ci_high"], f1["n"]) == (1.0, 1.0, 1.0, 1)   # "1.000 [1.000, 1.000]"
    msg = str(record[0].message)
    assert msg == ("per-label intervals of m over only 1 protein(s): a bootstrap interval needs at least 10 to say "
                   "anything; tables mark it as not informative") and "\n" not in msg
    with pytest.warns(UserWarning, match="paired sample-F1 difference over only 1 protein"):
        statistics.bootstrap_f1_difference(pred, pred, TWO, n_boot=20)


def test_enough_proteins_give_no_warning():
    rng = np.random.default_rng(0)
    y = (rng.random((statistics.MIN_INTERVAL_PROTEINS, 2)) < 0.5).astype(int)
    pred = _two_label_pred("m", y, rng.random(y.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statistics.bootstrap_per_label(pred, TWO, n_boot=20)
        statistics.bootstrap_f1_difference(pred, pred, TWO, n_boot=20)


@pytest.mark.parametrize("n, note", [(1, "n=1: too few proteins for an interval"),
                                     (9, "n=9: too few proteins for an interval"), (10, None), (500, None)])
def test_too_few_for_interval(n, note):
    assert statistics.too_few_for_interval(n) == note
