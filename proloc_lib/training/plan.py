"""A profile's training section expanded into runs: configurations x seeds, ablations,
cross-validation, the label-permutation control and re-splits. The one place that reads the
section (the schema has checked its keys and types). No torch import."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from proloc_lib.core.runs import CONTROL_PERMUTED, make_id, parse, slug
from proloc_lib.training.settings import TrainConfig, make_config, train_config_dict

# run seed s trains with every seed of the profile plus s * SEED_STRIDE: replicates never share a seed
SEED_STRIDE = 1000


@dataclass(kw_only=True)
class Plan:
    """Every run of notebook 03, built before any work.

    ``runs``: one dict per (run, seed): ``run_id``, ``config``, ``seed``, ``train`` (TrainConfig),
    and for ablations ``ablation`` (the slug) and ``image_variant``. ``configs``: each named
    configuration used by any part. ``cross_validation`` and ``control``: the configuration each
    trains (or None). ``control_seeds``: one label-permutation control run per seed (each its
    own permutation). ``resplits``: ``{"methods", "repeats", "config"}`` (or None).
    ``seed_offset``: added to every training, control and re-split seed (``for_run_seed``).
    """
    runs: list[dict]
    seeds: list[int]
    configs: dict[str, TrainConfig]
    cross_validation: str | None = None
    control: str | None = None
    control_seeds: list[int] = field(default_factory=list)
    resplits: dict | None = None
    seed_offset: int = 0

    def for_run_seed(self, run_seed: int) -> "Plan":
        """The plan of run seed ``run_seed`` (``proloc run --seed``): every training seed, each
        control run's and each re-split's seed, moved by ``run_seed * SEED_STRIDE``; run seed 0 is
        the profile's plan."""
        offset = int(run_seed) * SEED_STRIDE
        if offset == self.seed_offset:
            return self
        shift = offset - self.seed_offset
        return replace(self, runs=[{**r, "seed": r["seed"] + shift} for r in self.runs],
                       seeds=[s + shift for s in self.seeds], control_seeds=[s + shift for s in self.control_seeds],
                       seed_offset=offset)

    def table(self) -> pd.DataFrame:
        """One row per run and seed with every switch (what notebook 03 shows first)."""
        return pd.DataFrame([{"run": r["run_id"], "seed": r["seed"], "config_hash": r["train"].hash(),
                              **({"image_variant": r.get("image_variant")} if "image_variant" in r else {}),
                              **train_config_dict(r["train"])} for r in self.runs])

    def all_training_runs(self, *, folds: int) -> list[dict]:
        """Every model the stage trains (the dry run's list): the runs, one per cross-validation
        fold, one control run per seed, one per re-split repeat."""
        out = [dict(r) for r in self.runs]
        if self.cross_validation:
            name = self.cross_validation
            out += [{"run_id": f"{make_id('cv', name)} fold {f}", "config": name, "seed": self.seeds[0],
                     "train": self.configs[name]} for f in range(folds)]
        if self.control:
            out += [{"run_id": CONTROL_PERMUTED, "config": self.control, "seed": s,
                     "train": self.configs[self.control]} for s in self.control_seeds]
        if self.resplits:
            name = self.resplits["config"]
            out += [{"run_id": make_id("resplit", m), "config": name, "seed": self.seed_offset + r,
                     "train": self.configs[name]}
                    for m in self.resplits["methods"] for r in range(self.resplits["repeats"])]
        return out


def _optional_config(value) -> str | None:
    """``false``/absent -> None; ``true`` -> corrected; ``{config: name}`` -> name."""
    if not value:
        return None
    return "corrected" if value is True else (value.get("config") or "corrected")


def control_seeds(seeds: list[int], runs: int | None) -> list[int]:
    """The control's seeds: the training seeds, then further integers, ``runs`` in all
    (default: one per training seed)."""
    runs = len(seeds) if runs is None else int(runs)
    if runs < 1:
        raise ValueError(f"training.control.runs must be at least 1, got {runs}")
    out, extra = list(seeds[:runs]), max(seeds) + 1
    while len(out) < runs:
        out.append(extra)
        extra += 1
    return out


def build_plan(section: dict) -> Plan:
    """Expand a profile's ``training`` section into a :class:`Plan`; raises ValueError on a bad run.

    ``configurations: {name: overrides}`` are the named settings (authors, corrected), run id
    ``fusion.<name>``, each trained with every seed of ``seeds`` (the same seeds for every
    configuration, so runs pair by seed). ``ablations: {label: {of: name, image_variant: variant,
    switches}}`` change single switches of one configuration (first seed only; run id
    ``ablation.<slug>``); ``image_variant`` trains on the store ``02_embeddings/images-<variant>/``.
    ``ablation_overrides`` (e.g. a shorter schedule) apply to every ablation run and to the run
    ``ablation.reference`` they are compared with. ``cross_validation: false | {config: name}``;
    ``control: false | {config: name, runs: n}`` (default on, ``corrected``, one run per training
    seed: ``runs`` sets how many, which fixes how small a leak it can detect);
    ``resplits: {methods: [stratified, homology], repeats: n, config: name}`` (repeat r re-splits with
    seed r and trains with seed r).
    """
    base = section.get("base") or {}
    seeds = [int(s) for s in section.get("seeds", [0])]
    if not seeds:
        raise ValueError("training.seeds: empty; give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"training.seeds: repeats a seed: {seeds}")
    configurations = section.get("configurations") or {"corrected": {}}

    def config(where: str, name: str, **over) -> TrainConfig:
        try:
            return make_config(name, base, **over)
        except ValueError as exc:   # say which run's merged settings are wrong
            raise ValueError(f"{where} (with training.base): {exc}") from None

    def named(name: str) -> TrainConfig:
        return config(f"training.configurations.{name}", name, **(configurations.get(name) or {}))

    runs, configs = [], {}
    for seed in seeds:
        for name in configurations:
            configs.setdefault(name, named(name))
            rid = make_id("fusion", name)
            runs.append({"run_id": rid, "model": rid, "config": name, "seed": seed, "train": configs[name]})
    ablations = section.get("ablations") or {}
    common = section.get("ablation_overrides") or {}
    if any(slug(label) == "reference" for label in ablations):
        raise ValueError("training.ablations: 'reference' is reserved for the run the ablations are compared with; "
                         "rename that ablation")
    seen = set()
    for label, spec in ({"reference": {}, **ablations} if ablations else {}).items():
        spec = dict(spec or {})
        of = spec.pop("of", "corrected")
        variant = spec.pop("image_variant", None)
        rid = make_id("ablation", label)
        if rid in seen:
            raise ValueError(f"training.ablations.{label}: gives the run id {rid} twice (ablation names must "
                             "differ after slugging; 'reference' is reserved)")
        seen.add(rid)
        over = {**(configurations.get(of) or {}), **common, **spec}
        run = {"run_id": rid, "model": rid, "config": of, "seed": seeds[0],
               "train": config(f"training.ablations.{label}", of, **over), "ablation": parse(rid)[1]}
        if variant is not None:
            run["image_variant"] = str(variant)
        runs.append(run)
    cv = _optional_config(section.get("cross_validation"))
    control = _optional_config(section.get("control", True))
    ctl = section.get("control")
    ctl_seeds = control_seeds(seeds, ctl.get("runs") if isinstance(ctl, dict) else None) if control else []
    rs = section.get("resplits") or None
    if rs:
        rs = {"methods": list(rs.get("methods", ["stratified"])), "repeats": int(rs.get("repeats", 3)),
              "config": rs.get("config", "corrected")}
    for name in (cv, control, rs and rs["config"]):
        if name:
            configs.setdefault(name, named(name))
    return Plan(runs=runs, seeds=seeds, configs=configs, cross_validation=cv, control=control,
                control_seeds=ctl_seeds, resplits=rs)
