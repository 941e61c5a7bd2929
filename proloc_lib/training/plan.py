"""A profile's training section expanded into runs (configurations x seeds, ablations, cross-validation, control, re-splits). No torch import."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from proloc_lib.core import runs
from proloc_lib.core.runs import make_id, parse, slug
from proloc_lib.training import settings
from proloc_lib.training.settings import NAMED_CONFIGS, make_config

PLAN_KEYS = {"seeds", "base", "configurations", "ablations", "ablation_overrides", "cross_validation", "control",
             "resplits"}
RESPLIT_KEYS = {"methods", "repeats", "config"}
RESPLIT_METHODS = ("stratified", "homology")


def resplit_plan(section: dict) -> list[dict]:
    """The ``resplits`` of a training section, checked and expanded: one {method, config, seeds}
    per protocol. Profile shape: ``resplits: {methods: [stratified, homology], repeats: 3,
    config: corrected}`` (repeat r re-splits with seed r and trains with seed r)."""
    rs = section.get("resplits")
    if not rs:
        return []
    if not isinstance(rs, dict) or set(rs) - RESPLIT_KEYS:
        raise ValueError(f"training.resplits = {rs!r}: give a mapping with keys {sorted(RESPLIT_KEYS)}")
    methods = list(rs.get("methods", ["stratified"]))
    bad = [m for m in methods if m not in RESPLIT_METHODS]
    if bad:
        raise ValueError(f"training.resplits.methods {bad}: choose from {RESPLIT_METHODS}")
    name = rs.get("config", "corrected")
    if name not in NAMED_CONFIGS:
        raise ValueError(f"training.resplits.config {name!r}: choose one of {sorted(NAMED_CONFIGS)}")
    return [{"method": m, "config": name, "seeds": list(range(int(rs.get("repeats", 3))))} for m in methods]


def training_plan(section: dict) -> list[dict]:
    """Expand a profile's ``training`` section into runs; every option is checked up front.

    ``configurations: {name: overrides}`` are the named settings (authors, corrected), one run id
    ``fusion.<name>`` each, trained with every seed of ``seeds`` (the same seeds for every
    configuration, so runs pair by seed). ``ablations: {slug: {of: name, image_variant: variant,
    switches}}`` change single switches of one of them (first seed only; run id
    ``ablation.<slug>``, labels with spaces are slugged); ``image_variant`` trains on the store
    ``02_embeddings/images-<variant>/``. ``ablation_overrides`` (e.g. a shorter schedule) apply to
    every ablation run and to the run ``ablation.reference`` they are compared with.
    ``cross_validation``, ``control`` and ``resplits`` are read by ``experiments.plan_runs``.

    Returns one dict per (run, seed): ``run_id`` (also under ``model``), ``config``, ``seed``,
    ``train`` (TrainConfig), and for ablations ``ablation`` (the slug) and ``image_variant``.
    """
    unknown = set(section) - PLAN_KEYS
    if unknown:
        raise ValueError(f"unknown keys in the training section {sorted(unknown)} (allowed: {sorted(PLAN_KEYS)})")
    base = section.get("base", {})
    resplit_plan(section)  # checked here, run by experiments.run_resplits
    seeds = list(section.get("seeds", [0]))
    configurations = section.get("configurations") or {"corrected": {}}
    runs = []
    for seed in seeds:
        for name, over in configurations.items():
            rid = make_id("fusion", name)
            runs.append({"run_id": rid, "model": rid, "config": name, "seed": seed,
                         "train": make_config(name, base, **(over or {}))})
    ablations = section.get("ablations") or {}
    common = section.get("ablation_overrides") or {}
    if any(slug(label) == "reference" for label in ablations):
        raise ValueError("'reference' is reserved for the run the ablations are compared with; rename that ablation")
    seen = set()
    for label, spec in ({"reference": {}, **ablations} if ablations else {}).items():
        spec = dict(spec or {})
        of = spec.pop("of", "corrected")
        variant = spec.pop("image_variant", None)
        rid = make_id("ablation", label)
        if rid in seen:
            raise ValueError(f"ablation '{label}' gives the run id {rid} twice (ablation names must differ "
                             "after slugging; 'reference' is reserved)")
        seen.add(rid)
        over = {**configurations.get(of, {}), **common, **spec}
        run = {"run_id": rid, "model": rid, "config": of, "seed": seeds[0], "train": make_config(of, base, **over),
               "ablation": parse(rid)[1]}
        if variant is not None:
            run["image_variant"] = str(variant)
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# the plan

@dataclass(kw_only=True)
class Plan:
    """The training section expanded: every run, checked before any work.

    ``runs``: one dict per (run, seed) from ``plan.training_plan``; ``cross_validation``:
    the configuration trained per fold (or None); ``control``: the configuration of the
    label-permutation control (or None); ``resplits``: ``{"methods", "repeats", "config"}`` (or None).
    """
    runs: list[dict]
    seeds: list[int]
    configs: dict[str, settings.TrainConfig]
    cross_validation: str | None = None
    control: str | None = None
    resplits: dict | None = None

    def table(self) -> pd.DataFrame:
        """One row per run and seed with every switch (what notebook 03 shows first)."""
        return pd.DataFrame([{"run": r["run_id"], "seed": r["seed"], "config_hash": r["train"].hash(),
                              **({"image_variant": r.get("image_variant")} if "image_variant" in r else {}),
                              **settings.train_config_dict(r["train"])} for r in self.runs])


RESPLIT_KEYS = {"methods", "repeats", "config"}


def plan_runs(cfg: dict) -> Plan:
    """``training_plan`` plus the optional parts: cross-validation, control, re-splits.

    Profile keys (under ``training``): ``cross_validation: false | {config: name}``;
    ``control: false | {config: name}`` (default ``{config: corrected}``: the control is cheap and
    must land at chance); ``resplits: false | {methods: [stratified, homology], repeats: n,
    config: name}`` (default off; the full-extended tier turns it on).
    """
    section = cfg["training"]
    run_list = training_plan(section)
    base = section.get("base")
    configurations = section.get("configurations") or {"corrected": {}}

    def named(name, what):
        if not isinstance(name, str):
            raise ValueError(f"training.{what}.config must be a configuration name, got {name!r}")
        return settings.make_config(name, base, **(configurations.get(name) or {}))

    def spec(value, what):
        """false/absent -> None; true -> {config: corrected}; a mapping must name only ``config``."""
        if not value:
            return None
        if value is True:
            return {"config": "corrected"}
        if not isinstance(value, dict) or set(value) - {"config"}:
            raise ValueError(f"training.{what} must be false, true or {{config: <name>}}, got {value!r}")
        return {"config": value.get("config", "corrected")}

    configs = {r["config"]: r["train"] for r in run_list if r["run_id"] == runs.make_id("fusion", r["config"])}
    cv = spec(section.get("cross_validation"), "cross_validation")
    if cv:
        configs.setdefault(cv["config"], named(cv["config"], "cross_validation"))
    control = spec(section.get("control", True), "control")
    if control:
        configs.setdefault(control["config"], named(control["config"], "control"))
    rs = section.get("resplits") or None
    if rs:
        unknown = set(rs) - RESPLIT_KEYS
        if unknown:
            raise ValueError(f"unknown keys in training.resplits {sorted(unknown)} (allowed: {sorted(RESPLIT_KEYS)})")
        rs = {"methods": list(rs.get("methods", ["stratified"])), "repeats": int(rs.get("repeats", 3)),
              "config": rs.get("config", "corrected")}
        configs.setdefault(rs["config"], named(rs["config"], "resplits"))
    return Plan(runs=run_list, seeds=list(section.get("seeds", [0])), configs=configs,
                cross_validation=cv["config"] if cv else None, control=control["config"] if control else None,
                resplits=rs)
