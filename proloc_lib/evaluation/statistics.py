"""Uncertainty: bootstrap intervals over proteins (and over seeds and proteins at once), seed-paired
differences, Holm's correction, calibration with its sampling floor, variation over re-splits, and what
the label-permutation control can and cannot rule out."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from proloc_lib.core import runs
from proloc_lib.evaluation import metrics
from proloc_lib.evaluation.scoring import unpack

MIN_INTERVAL_PROTEINS = 10   # fewer proteins: a bootstrap interval says nothing (one protein gives [x, x])


def too_few_for_interval(n: int) -> str | None:
    """What a table shows instead of an interval over ``n`` proteins when they are too few (None: enough)."""
    return f"n={n}: too few proteins for an interval" if n < MIN_INTERVAL_PROTEINS else None


def _warn_if_too_few(n: int, what: str) -> None:
    if n < MIN_INTERVAL_PROTEINS:
        warnings.warn(f"{what} over only {n} protein(s): a bootstrap interval needs at least "
                      f"{MIN_INTERVAL_PROTEINS} to say anything; tables mark it as not informative", stacklevel=3)


def bootstrap_f1_difference(pred_a: pd.DataFrame, pred_b: pd.DataFrame, labels: list[str], n_boot: int = 2000,
                            seed: int = 0, ci: float = 0.95) -> dict:
    """Paired per-protein bootstrap of the sample-F1 difference (a - b) on the same proteins.

    ``p_value``: two-sided, from the bootstrap standard error (normal approximation), so it is
    not limited to steps of 1/n_boot and can enter a multiple-comparison correction (``holm``)."""
    a = pred_a.set_index("protein_id")
    b = pred_b.set_index("protein_id").loc[a.index]
    ya, pa, ta = unpack(a, labels)
    yb, pb, tb = unpack(b, labels)
    if not np.array_equal(ya, yb):
        raise ValueError("the two prediction sets disagree on the true labels: not the same proteins/split")
    diff = metrics.sample_f1(ya, metrics.binarize(pa, ta)) - metrics.sample_f1(yb, metrics.binarize(pb, tb))
    _warn_if_too_few(len(diff), "the paired sample-F1 difference")
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"mean_difference": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": _normal_p(float(diff.mean()), float(boots.std(ddof=1))),
            "n_proteins": int(len(diff)), "n_boot": n_boot}


def _normal_p(estimate: float, se: float) -> float:
    """Two-sided p of ``estimate`` against 0 with standard error ``se``."""
    from scipy import stats

    if not se > 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * stats.norm.sf(abs(estimate) / se))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (same order as given; NaN stays NaN).

    Sorted p_(1) <= ... <= p_(m): adjusted p_(k) = max over j <= k of min(1, (m - j + 1) p_(j)).
    Rejecting where the adjusted p < alpha keeps the family-wise error rate at alpha."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def hierarchical_bootstrap(d: np.ndarray, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """One interval for the mean of ``d`` (seeds x proteins, each seed scoring the same proteins)
    over both sources of variation: training seeds and test proteins.

    Each resample draws seeds with replacement and proteins with replacement; the protein draw is
    shared by the drawn seeds, because every seed scores the same proteins (a crossed design:
    drawing proteins anew within each seed would treat them as different proteins and make the
    interval too narrow). Before resampling, each seed's and each protein's deviation from the
    grand mean is scaled by sqrt(S/(S-1)) and sqrt(N/(N-1)), which undoes the bootstrap's
    shrinkage of a variance over few units. Percentile interval. With few seeds and seed-to-seed
    variation dominating, coverage stays below nominal (about 0.89 for 5 seeds in simulation).
    """
    d = np.asarray(d, dtype=float)
    if d.ndim != 2 or min(d.shape) == 0 or np.isnan(d).any():
        raise ValueError(f"need a complete seeds x proteins matrix, got shape {d.shape}")
    n_s, n_p = d.shape
    m = d.mean()
    rows, cols = d.mean(1) - m, d.mean(0) - m
    scaled = d.copy()
    if n_s > 1:
        scaled += (np.sqrt(n_s / (n_s - 1)) - 1) * rows[:, None]
    if n_p > 1:
        scaled += (np.sqrt(n_p / (n_p - 1)) - 1) * cols[None, :]
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, 500):                      # chunks keep the weight matrices small
        k = min(500, n_boot - start)
        ws = _counts(rng.integers(0, n_s, size=(k, n_s)), n_s)
        wp = _counts(rng.integers(0, n_p, size=(k, n_p)), n_p)
        boots[start:start + k] = np.einsum("bs,sn,bn->b", ws, scaled, wp) / (n_s * n_p)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"mean_difference": float(m), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": _normal_p(float(m), float(boots.std(ddof=1))), "n_seeds": int(n_s),
            "n_proteins": int(n_p), "n_boot": int(n_boot)}


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """(B, k) indices -> (B, n) multiplicities."""
    return np.stack([np.bincount(r, minlength=n) for r in draws]).astype(float)


def main_comparison(pred: pd.DataFrame, labels: list[str], a: str = runs.FUSION_CORRECTED,
                    b: str = runs.FUSION_AUTHORS, *, level: str = "protein", split: str = "test",
                    n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """``a`` minus ``b`` in per-protein sample F1, runs paired by training seed, one
    ``hierarchical_bootstrap`` interval over seeds and proteins. Empty dict when the two share
    no seed."""
    sel = pred[(pred["level"] == level) & (pred["split"] == split)]
    seeds = sorted(set(sel.loc[sel["model"] == a, "seed"]) & set(sel.loc[sel["model"] == b, "seed"]))
    if not seeds:
        return {}
    rows, proteins = [], None
    for s in seeds:
        pa = sel[(sel["model"] == a) & (sel["seed"] == s)].set_index("protein_id").sort_index()
        pb = sel[(sel["model"] == b) & (sel["seed"] == s)].set_index("protein_id")
        if proteins is not None and not pa.index.equals(proteins):
            raise ValueError(f"seed {s} of {a} is scored on other proteins than seed {seeds[0]}")
        proteins = pa.index
        pb = pb.loc[proteins]
        ya, prob_a, ta = unpack(pa, labels)
        yb, prob_b, tb = unpack(pb, labels)
        if not np.array_equal(ya, yb):
            raise ValueError(f"{a} and {b} disagree on the true labels (seed {s}): not the same proteins/split")
        rows.append(metrics.sample_f1(ya, metrics.binarize(prob_a, ta))
                    - metrics.sample_f1(yb, metrics.binarize(prob_b, tb)))
    _warn_if_too_few(len(proteins), f"the comparison {a} - {b}")
    out = hierarchical_bootstrap(np.stack(rows), n_boot=n_boot, seed=seed, ci=ci)
    return {"model_a": a, "model_b": b, "metric": "sample F1 (per protein)", **out, "seeds": [int(s) for s in seeds]}


# ----------------------------------------------------------------------------- statistics for reviewers

def _quantiles(x: np.ndarray, ci: float, axis=0):
    lo, hi = (1 - ci) / 2, 1 - (1 - ci) / 2
    with np.errstate(all="ignore"):
        return np.nanquantile(x, lo, axis=axis), np.nanquantile(x, hi, axis=axis)


def weighted_average_precision(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step definition, ties grouped) for each row of ``weights``.

    ``y`` (n,) 0/1, ``score`` (n,), ``weights`` (B, n) sample multiplicities (a bootstrap draw).
    Returns (B,) with NaN where a draw holds no positive. Equals
    ``average_precision_score(y, score, sample_weight=w)`` row by row, without B sklearn calls.
    """
    order = np.argsort(-score, kind="mergesort")
    s, yy, w = score[order], y[order].astype(float), np.asarray(weights, dtype=float)[:, order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]          # last index of each distinct score
    tps = np.cumsum(w * yy, axis=1)[:, ends]
    fps = np.cumsum(w * (1 - yy), axis=1)[:, ends]
    total = tps[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        recall = tps / total
    d_recall = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
    ap = np.sum(d_recall * precision, axis=1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def _pred_slice(pred: pd.DataFrame, model: str, level: str, split: str, seed=None) -> pd.DataFrame:
    sel = pred[(pred["model"] == model) & (pred["level"] == level) & (pred["split"] == split)]
    if "fold" in sel and sel["fold"].notna().any():
        return sel                                        # cross-validation: every protein once
    seed = sel["seed"].min() if seed is None else seed
    return sel[sel["seed"] == seed]


def bootstrap_per_label(pred: pd.DataFrame, labels: list[str], *, models=None, level: str = "protein",
                        split: str = "test", n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Per-label F1 and average precision with percentile bootstrap intervals over the units of
    ``level`` (proteins by default), first seed of each model, at the thresholds the run chose.

    Long frame: model, label, metric (f1 | average_precision), value, ci_low, ci_high, n, n_boot,
    undefined_draws (resamples without a positive, left out of the interval). A label without a
    positive in the split is NaN (undefined) with no interval.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for model in (models if models is not None else list(dict.fromkeys(pred["model"]))):
        s = _pred_slice(pred, model, level, split)
        if s.empty:
            continue
        y, p, t = unpack(s, labels)
        n = len(y)
        _warn_if_too_few(n, f"per-label intervals of {model}")
        idx = rng.integers(0, n, size=(n_boot, n))
        w = np.stack([np.bincount(r, minlength=n) for r in idx])          # (B, n) multiplicities
        calls = metrics.binarize(p, t).astype(float)
        for j, lab in enumerate(labels):
            yj, cj = y[:, j].astype(float), calls[:, j]
            tp, fp, fn = w @ (yj * cj), w @ ((1 - yj) * cj), w @ (yj * (1 - cj))
            with np.errstate(invalid="ignore", divide="ignore"):
                f1_b = np.where(tp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
            ap_b = weighted_average_precision(yj, p[:, j], w)
            ones = np.ones((1, n))
            point_f1 = float(metrics.full_report(y, p, t, labels=labels)["per_label"][lab]["f1"])
            point_ap = float(weighted_average_precision(yj, p[:, j], ones)[0])
            for name, point, draws in (("f1", point_f1, f1_b), ("average_precision", point_ap, ap_b)):
                lo, hi = _quantiles(draws, ci) if not np.isnan(point) else (np.nan, np.nan)
                rows.append({"model": model, "label": lab, "metric": name, "value": point,
                             "ci_low": float(lo), "ci_high": float(hi), "n": n, "n_boot": n_boot,
                             "undefined_draws": int(np.isnan(draws).sum())})
    return pd.DataFrame(rows)


def calibration_table(pred: pd.DataFrame, labels: list[str], *, models=None, level: str = "protein",
                      split: str = "test", n_bins: int = 10, n_sim: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Expected calibration error and Brier score per model (all labels pooled), mean and sd over
    seeds: the numbers behind the reliability diagram (same bins).

    ``ece_floor_mean`` / ``ece_floor_p95``: the sampling floor of that mean ECE at this test size
    (``ece_floor``: labels drawn from each seed's own forecasts, so perfectly calibrated; ``n_sim``
    draws). A mean ECE under the floor's 95th percentile is not distinguishable from noise."""
    rows = []
    rng = np.random.default_rng(seed)
    for model in (models if models is not None else list(dict.fromkeys(pred["model"]))):
        sel = pred[(pred["model"] == model) & (pred["level"] == level) & (pred["split"] == split)]
        per_seed, floors = [], []
        for _, s in sel.groupby("seed"):
            y, p, _ = unpack(s, labels)
            per_seed.append(metrics.calibration(y, p, n_bins=n_bins))
            floors.append(ece_floor(p, n_sim=n_sim, n_bins=n_bins, rng=rng))
        if per_seed:
            df = pd.DataFrame(per_seed)
            floor = np.mean(floors, axis=0)               # the floor of the mean over seeds, draw by draw
            rows.append({"model": model, "ece": df["ece"].mean(), "ece_sd": df["ece"].std(),
                         "ece_floor_mean": float(floor.mean()), "ece_floor_p95": float(np.quantile(floor, 0.95)),
                         "brier": df["brier"].mean(), "brier_sd": df["brier"].std(), "n_seeds": len(df),
                         "n": int(len(y))})
    return pd.DataFrame(rows)


def ece_floor(y_prob, *, n_sim: int = 1000, n_bins: int = 10, rng=None) -> np.ndarray:
    """ECE of perfectly calibrated forecasts: ``n_sim`` label sets drawn from the forecasts
    themselves (y ~ Bernoulli(p), every (sample, label) pooled as in ``metrics.calibration``);
    returns the ``n_sim`` ECE values. Not zero: a finite test set scatters the observed
    frequencies around the forecasts."""
    rng = np.random.default_rng(0) if rng is None else rng
    p = np.asarray(y_prob, dtype=float).ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    onehot = np.zeros((p.size, n_bins))
    onehot[np.arange(p.size), bins] = 1.0
    p_sum = p @ onehot                                                 # (bins,)
    out = np.empty(n_sim)
    for start in range(0, n_sim, 250):
        k = min(250, n_sim - start)
        y = (rng.random((k, p.size)) < p).astype(float)
        out[start:start + k] = np.abs(y @ onehot - p_sum).sum(1) / p.size
    return out


def _t_interval(x: np.ndarray, ci: float):
    from scipy import stats

    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return (float(x.mean()) if len(x) else np.nan), np.nan, np.nan, np.nan
    m, sd = float(x.mean()), float(x.std(ddof=1))
    half = stats.t.ppf(1 - (1 - ci) / 2, len(x) - 1) * sd / np.sqrt(len(x))
    return m, sd, m - half, m + half


def seed_paired_differences(results: pd.DataFrame, a: str = runs.FUSION_CORRECTED, b: str = runs.FUSION_AUTHORS,
                            *, metric_names=("f1", "f1_paper", "micro_f1", "macro_f1", "macro_ap", "ece", "brier"),
                            level: str = "protein", split: str = "test", ci: float = 0.95) -> pd.DataFrame:
    """``a`` minus ``b`` per training seed (runs paired by seed, same split), then the mean
    difference with a t interval over seeds. Columns: metric, n_seeds, mean_difference, sd,
    ci_low, ci_high, differences (per seed). Fewer than two paired seeds: no interval (NaN)."""
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] == "overall")
                  & results["metric"].isin(metric_names)]
    wide = {m: sel[sel["model"] == m].pivot_table(index="seed", columns="metric", values="value")
            for m in (a, b)}
    seeds = wide[a].index.intersection(wide[b].index)
    rows = []
    for name in metric_names:
        if name not in wide[a] or name not in wide[b]:
            continue
        d = (wide[a].loc[seeds, name] - wide[b].loc[seeds, name]).to_numpy()
        m, sd, lo, hi = _t_interval(d, ci)
        rows.append({"model_a": a, "model_b": b, "metric": name, "n_seeds": int(len(d)), "mean_difference": m,
                     "sd": sd, "ci_low": lo, "ci_high": hi, "differences": [round(float(v), 4) for v in d]})
    return pd.DataFrame(rows)


def resplit_summary(results: pd.DataFrame, *, by: str = "fold", models=None,
                    metric_names=("f1", "f1_paper", "micro_f1", "macro_f1", "macro_ap"),
                    level: str = "protein", split: str = "test", ci: float = 0.95) -> pd.DataFrame:
    """Variance over data splits (not training seeds): per model and metric, mean, sd and a t
    interval over the values of column ``by`` (a fold or re-split number; seeds averaged within
    a split first). Columns: model, metric, n_splits, mean, sd, ci_low, ci_high."""
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] == "overall")
                  & results["metric"].isin(metric_names) & results[by].notna()]
    if models is not None:
        sel = sel[sel["model"].isin(models)]
    per_split = sel.groupby(["model", "metric", by])["value"].mean().reset_index()
    rows = []
    for (model, name), g in per_split.groupby(["model", "metric"], sort=False):
        m, sd, lo, hi = _t_interval(g["value"].to_numpy(), ci)
        rows.append({"model": model, "metric": name, "n_splits": len(g), "mean": m, "sd": sd,
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def excess_bound(excess, *, level: float = 0.95, power: float = 0.8) -> dict:
    """What ``R`` control runs say about a leak, from their excesses over chance (last axis).

    ``excess``: mean over runs; ``excess_upper``: one-sided ``level`` upper bound (t, R-1
    degrees of freedom): the true excess is at most this; ``p_value``: one-sided t test of
    excess <= 0; ``leak_detected``: that test rejects at 1 - ``level``; ``detectable``: the
    smallest true excess that test detects with probability ``power`` (noncentral t), given the
    observed run-to-run sd and R. Works on (..., R) arrays (entries then arrays). Fewer than 2
    runs: no spread, all NaN but the mean.
    """
    from scipy import optimize, stats

    x = np.asarray(excess, dtype=float)
    n = x.shape[-1]
    mean = x.mean(-1)
    if n < 2:
        nan = np.full(np.shape(mean), np.nan)
        return {"excess": mean, "excess_sd": nan, "excess_upper": nan, "p_value": nan, "leak_detected": False,
                "detectable": nan, "n_runs": n, "level": level, "power": power}
    df = n - 1
    sd = x.std(-1, ddof=1)
    se = sd / np.sqrt(n)
    t_crit = stats.t.ppf(level, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_obs = np.where(se > 0, mean / se, np.where(mean > 0, np.inf, -np.inf))   # no spread: the sign decides
    # noncentrality at which P(T > t_crit) = power; the detectable excess is that many standard errors
    ncp = optimize.brentq(lambda d: stats.nct.sf(t_crit, df, d) - power, 0.0, 100.0)
    p_value = stats.t.sf(t_obs, df)
    return {"excess": mean, "excess_sd": sd, "excess_upper": mean + t_crit * se, "p_value": p_value,
            "leak_detected": p_value < 1 - level, "detectable": ncp * se, "n_runs": n, "level": level,
            "power": power}


PRIMARY_CONTROL_METRIC = "macro_ap"   # threshold-free: a leak shows in the ranking whatever the thresholds


def permutation_control(pred: pd.DataFrame, labels: list[str], *, control: str = "control.permuted_labels",
                        level: str = "protein", split: str = "test", n_perm: int = 1000, seed: int = 0,
                        ci: float = 0.95, power: float = 0.8) -> dict:
    """How large a leak the label-permutation control rules out, and how large one it could see.

    Chance is the label-frequency expectation: each control run's predictions assigned to the
    test proteins at random (scores permuted across them, ``n_perm`` times), which keeps the
    model's call rates and the labels' prevalences and removes any association. Per label: AP
    against that null (its mean is about the prevalence); overall: sample F1 and macro AP.

    Each run (one per control seed, each with its own permutation of the training labels) gives
    an excess = observed - its null mean. A noise-trained model's scores can cluster by image
    class, so runs scatter more than the shuffle null says; the statement is over runs
    (``excess_bound``): per metric the mean excess, its one-sided ``ci`` upper bound, and the
    excess detectable with probability ``power`` given the observed spread and the number of
    runs. ``leak_detected``: the one-sided t test on the macro AP excess rejects (the primary
    metric; sample F1 is reported beside it). "No leak detected" means only that the excess is
    below ``macro_ap_excess_upper``; it says nothing about leaks smaller than
    ``macro_ap_detectable``. One run: no run-to-run spread, so no bound; ``leak_detected`` then
    asks whether macro AP exceeds the shuffle null's one-sided ``ci`` quantile.
    """
    sel = pred[(pred["model"] == control) & (pred["level"] == level) & (pred["split"] == split)]
    if sel.empty:
        raise ValueError(f"no predictions of '{control}' at level '{level}', split '{split}'")
    seeds = sorted(sel["seed"].dropna().unique()) or [None]
    per_seed = [_control_one_seed(_pred_slice(pred, control, level, split, seed=s), labels, control=control,
                                  n_perm=n_perm, seed=seed, ci=ci) for s in seeds]
    out = {"control": control, "n": per_seed[0]["n"], "n_perm": n_perm, "n_runs": len(per_seed),
           "level": ci, "power": power}
    for m in ("sample_f1", "macro_ap"):
        bound = excess_bound([r[m] - r[f"{m}_null_mean"] for r in per_seed], level=ci, power=power)
        out.update({m: float(np.mean([r[m] for r in per_seed])),
                    f"{m}_null_mean": float(np.mean([r[f"{m}_null_mean"] for r in per_seed])),
                    f"{m}_excess": float(bound["excess"]), f"{m}_excess_sd": float(bound["excess_sd"]),
                    f"{m}_excess_upper": float(bound["excess_upper"]), f"{m}_p_value": float(bound["p_value"]),
                    f"{m}_detectable": float(bound["detectable"])})
    if len(per_seed) > 1:
        out["leak_detected"] = bool(out[f"{PRIMARY_CONTROL_METRIC}_p_value"] < 1 - ci)
    else:
        one = per_seed[0]
        out.update({f"{m}_null_high": one[f"{m}_null_high"] for m in ("sample_f1", "macro_ap")})
        out["leak_detected"] = bool(one[PRIMARY_CONTROL_METRIC] > one[f"{PRIMARY_CONTROL_METRIC}_null_high"])
    out["per_label"] = per_seed[0]["per_label"]
    return out


def _control_one_seed(s: pd.DataFrame, labels: list[str], *, control: str, n_perm: int, seed: int,
                      ci: float) -> dict:
    """One control run against its prediction-shuffle null (see ``permutation_control``);
    ``*_null_high`` is the null's one-sided ``ci`` quantile."""
    y, p, t = unpack(s, labels)
    calls = metrics.binarize(p, t)
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(len(y)) for _ in range(n_perm)])
    has_pos = y.sum(0) > 0
    out_labels, null_ap = [], []
    for j, lab in enumerate(labels):
        if not has_pos[j]:
            out_labels.append({"label": lab, "prevalence": 0.0, "average_precision": np.nan,
                               "null_mean": np.nan, "null_high": np.nan})
            continue
        obs = float(weighted_average_precision(y[:, j], p[:, j], np.ones((1, len(y))))[0])
        # permuting scores against fixed truth == permuting truth against fixed scores
        nulls = np.array([weighted_average_precision(y[perm, j], p[:, j], np.ones((1, len(y))))[0]
                          for perm in perms])
        null_ap.append(nulls)
        out_labels.append({"label": lab, "prevalence": float(y[:, j].mean()), "average_precision": obs,
                           "null_mean": float(nulls.mean()), "null_high": float(np.quantile(nulls, ci))})
    obs_f1 = float(metrics.sample_f1(y, calls).mean())
    null_f1 = np.array([metrics.sample_f1(y[perm], calls).mean() for perm in perms])
    obs_map = float(np.nanmean([r["average_precision"] for r in out_labels]))
    null_map = np.mean(np.stack(null_ap), axis=0)
    return {"control": control, "n": int(len(y)), "n_perm": n_perm,
            "sample_f1": obs_f1, "sample_f1_null_mean": float(null_f1.mean()),
            "sample_f1_null_high": float(np.quantile(null_f1, ci)),
            "macro_ap": obs_map, "macro_ap_null_mean": float(null_map.mean()),
            "macro_ap_null_high": float(np.quantile(null_map, ci)),
            "per_label": pd.DataFrame(out_labels)}
