"""Uncertainty: bootstrap intervals over proteins, seed-paired differences, calibration, variation over re-splits, and the label-permutation control."""

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
    """Paired per-protein bootstrap of the sample-F1 difference (a - b) on the same proteins."""
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
            "n_proteins": int(len(diff)), "n_boot": n_boot}


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
                      split: str = "test", n_bins: int = 10) -> pd.DataFrame:
    """Expected calibration error and Brier score per model (all labels pooled), mean and sd over
    seeds: the numbers behind the reliability diagram (same bins)."""
    rows = []
    for model in (models if models is not None else list(dict.fromkeys(pred["model"]))):
        sel = pred[(pred["model"] == model) & (pred["level"] == level) & (pred["split"] == split)]
        per_seed = []
        for _, s in sel.groupby("seed"):
            y, p, _ = unpack(s, labels)
            per_seed.append(metrics.calibration(y, p, n_bins=n_bins))
        if per_seed:
            df = pd.DataFrame(per_seed)
            rows.append({"model": model, "ece": df["ece"].mean(), "ece_sd": df["ece"].std(),
                         "brier": df["brier"].mean(), "brier_sd": df["brier"].std(), "n_seeds": len(df)})
    return pd.DataFrame(rows)


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


def permutation_control(pred: pd.DataFrame, labels: list[str], *, control: str = "control.permuted_labels",
                        level: str = "protein", split: str = "test", n_perm: int = 1000, seed: int = 0,
                        ci: float = 0.95) -> dict:
    """Does a model trained on permuted labels land at chance? Chance is the label-frequency
    expectation: the same predictions assigned to proteins at random (scores permuted across the
    test proteins, ``n_perm`` times), which keeps the model's call rates and the labels'
    prevalences and removes any association. Per label: AP against that null (its mean is about
    the prevalence); overall: sample F1 and macro AP.

    One control run: ``at_chance`` when its sample F1 and macro AP both lie inside the null's
    central ``ci`` interval. Several runs (one per training seed, each with its own permutation):
    a noise-trained model's scores can cluster by image class, so one run's AP varies more than
    the shuffle null says; then ``at_chance`` asks whether the runs beat chance *systematically*:
    the t interval over runs of (observed - null mean) must reach 0, for sample F1 and macro AP.
    """
    sel = pred[(pred["model"] == control) & (pred["level"] == level) & (pred["split"] == split)]
    if sel.empty:
        raise ValueError(f"no predictions of '{control}' at level '{level}', split '{split}'")
    seeds = sorted(sel["seed"].dropna().unique()) or [None]
    per_seed = [_control_one_seed(_pred_slice(pred, control, level, split, seed=s), labels, control=control,
                                  n_perm=n_perm, seed=seed, ci=ci) for s in seeds]
    out = dict(per_seed[0])
    out["n_runs"] = len(per_seed)
    if len(per_seed) > 1:
        excess = {m: np.array([r[m] - r[f"{m}_null_mean"] for r in per_seed]) for m in ("sample_f1", "macro_ap")}
        for m, x in excess.items():
            mean, _, lo, hi = _t_interval(x, ci)
            out.update({m: float(np.mean([r[m] for r in per_seed])),
                        f"{m}_null_mean": float(np.mean([r[f"{m}_null_mean"] for r in per_seed])),
                        f"{m}_excess": mean, f"{m}_excess_low": float(lo), f"{m}_excess_high": float(hi)})
            out.pop(f"{m}_null_low", None), out.pop(f"{m}_null_high", None)
        out["at_chance"] = bool(out["sample_f1_excess_low"] <= 0 and out["macro_ap_excess_low"] <= 0)
    return out


def _control_one_seed(s: pd.DataFrame, labels: list[str], *, control: str, n_perm: int, seed: int,
                      ci: float) -> dict:
    """One control run against its prediction-shuffle null (see ``permutation_control``)."""
    y, p, t = unpack(s, labels)
    calls = metrics.binarize(p, t)
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(len(y)) for _ in range(n_perm)])
    has_pos = y.sum(0) > 0
    out_labels, null_ap = [], []
    for j, lab in enumerate(labels):
        if not has_pos[j]:
            out_labels.append({"label": lab, "prevalence": 0.0, "average_precision": np.nan,
                               "null_mean": np.nan, "null_low": np.nan, "null_high": np.nan})
            continue
        obs = float(weighted_average_precision(y[:, j], p[:, j], np.ones((1, len(y))))[0])
        # permuting scores against fixed truth == permuting truth against fixed scores
        nulls = np.array([weighted_average_precision(y[perm, j], p[:, j], np.ones((1, len(y))))[0]
                          for perm in perms])
        null_ap.append(nulls)
        lo, hi = _quantiles(nulls, ci)
        out_labels.append({"label": lab, "prevalence": float(y[:, j].mean()), "average_precision": obs,
                           "null_mean": float(nulls.mean()), "null_low": float(lo), "null_high": float(hi)})
    obs_f1 = float(metrics.sample_f1(y, calls).mean())
    null_f1 = np.array([metrics.sample_f1(y[perm], calls).mean() for perm in perms])
    obs_map = float(np.nanmean([r["average_precision"] for r in out_labels]))
    null_map = np.mean(np.stack(null_ap), axis=0)
    f1_lo, f1_hi = _quantiles(null_f1, ci)
    map_lo, map_hi = _quantiles(null_map, ci)
    return {"control": control, "n": int(len(y)), "n_perm": n_perm,
            "sample_f1": obs_f1, "sample_f1_null_mean": float(null_f1.mean()),
            "sample_f1_null_low": float(f1_lo), "sample_f1_null_high": float(f1_hi),
            "macro_ap": obs_map, "macro_ap_null_mean": float(null_map.mean()),
            "macro_ap_null_low": float(map_lo), "macro_ap_null_high": float(map_hi),
            "at_chance": bool(f1_lo <= obs_f1 <= f1_hi and map_lo <= obs_map <= map_hi),
            "per_label": pd.DataFrame(out_labels)}
