"""What the stages share: the ``Stage`` every notebook driver builds on (profile, seed, device,
folders, locks, the check of its inputs, its manifest record), stage 01 and 02 outputs opened once
(``StageData``), the provenance later stages show, and run results.

A stage owns its folder while it runs (``core.locks``: a second run of it is refused in one line
naming the holder) and holds the folders it reads shared, so they cannot be rewritten under it.
Before any work it checks that what it reads is what its upstream stages' manifests describe
(checksums of their outputs), made for the same profile and run seed, and that those stages were
themselves made from the current outputs of theirs; otherwise one line names the stale stage and
the command that rebuilds it. Its manifest records the checksums it read, its code version and a
``stage_key`` over these and its parameters: ``stage_status`` compares that key with what a run
would use now, which is how ``proloc run`` skips a stage that is up to date.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd

from proloc_lib.core import manifest, paths, provenance, runs
from proloc_lib.core.errors import UserError
from proloc_lib.core.locks import FolderLock
from proloc_lib.core.manifest import MANIFEST
from proloc_lib.core.runtime import resolve_device
from proloc_lib.evaluation import tables
from proloc_lib.features.store import EmbeddingStore, store_checksums
from proloc_lib.profiles.loader import Profile, load_profile, profile_reference

NOTEBOOK_DIR = paths.PROJECT_ROOT / "notebooks"
STAGE_TABLES = ("proteins.parquet", "images.parquet")          # what later stages read of stage 01
STORE_FILES = ("*/store.json", "*/shard-*.safetensors")        # ... and of stage 02 (store_checksums)


class StaleInput(UserError):
    """An upstream stage is missing, made for another profile or seed, or changed since it was read."""


def check_seed(seed) -> int:
    """A run seed: a whole number >= 0."""
    if isinstance(seed, bool) or not str(seed).strip().isdigit():
        raise UserError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def stage_provenance(cfg: dict, data_root=None, *, seed: int = 0) -> dict:
    """The provenance later stages should show: the profile's, corrected by what stage 01 built.

    Stage 01 records in its manifest whether its data came from a mirror with synthetic images
    or stand-in sequences (``hpa.build_provenance``); the profile alone cannot know that.
    """
    path = paths.stage_dir(cfg["profile"], "01_data_assembly", data_root, seed=seed) / MANIFEST
    prov = dict(cfg.get("provenance", {}))
    if path.is_file():
        try:
            prov.update(json.loads(path.read_text()).get("provenance") or {})
        except ValueError:
            pass  # a broken manifest is stage 01's problem; the profile's provenance stands
    return prov


def stage_note(cfg: dict, data_root=None, *, seed: int = 0) -> str:
    """The provenance note of ``stage_provenance``: what later stages' tables and figures say."""
    return provenance.provenance_note(stage_provenance(cfg, data_root, seed=seed))


SPLITS = ("train", "val", "test")


def rebuild_command(cfg: Profile, *, seed: int, data_root=None, first: str, last: str) -> str:
    """``proloc run ... --only <first>..<last>``: the stages from ``first`` to ``last`` of this run."""
    names = paths.STAGES[paths.STAGES.index(first):paths.STAGES.index(last) + 1]
    root = "" if paths.is_default_data_root(data_root) else f" --data-root {paths.data_root(data_root)}"
    return (f"proloc run --profile {profile_reference(cfg)} --seed {seed}{root} "
            f"--only {','.join(n[:2] for n in names)}")


def current_checksums(stage: str, folder: Path, recorded: dict, patterns) -> dict:
    """The checksums of what a stage reads of ``folder`` (stage ``stage``'s output) now, by the rule
    that stage recorded them with: stores by ``store_checksums``, other files by sha256 of each file
    its manifest lists (a missing file is left out)."""
    if stage == "02_embeddings":
        return {f: s for f, s in store_checksums(folder).items() if any(fnmatch(f, p) for p in patterns)}
    return {f: manifest.sha256(folder / f) for f in recorded if (folder / f).is_file()}


def check_upstream(cfg: Profile, reads: dict, *, seed: int, data_root=None, reader: str) -> dict:
    """Verify the stages ``reads`` names (stage -> file patterns) for stage ``reader`` of this run;
    returns {stage: {file: checksum}} of what it reads. ``StaleInput``, one line naming the stage to
    rebuild and the command, when a stage is missing, made for another profile or seed, written by
    an older version, changed since it was written, or made from outputs that have changed since."""
    profile = cfg.name
    run = paths.run_dir(profile, data_root, seed=seed)
    manifests: dict[str, dict] = {}

    def stale(stage: str, problem: str) -> StaleInput:
        cmd = rebuild_command(cfg, seed=seed, data_root=data_root, first=stage, last=reader)
        return StaleInput(f"{run / stage}: {problem}; rebuild it with `{cmd}`")

    def manifest_of(stage: str) -> dict:
        if stage not in manifests:
            try:
                man = manifest.read_manifest(run / stage)
            except FileNotFoundError:
                raise stale(stage, f"stage {stage} of profile '{profile}' (seed {seed}) has not completed") from None
            except manifest.ManifestError as exc:
                raise stale(stage, f"unreadable manifest ({exc})") from None
            params = man.get("parameters") or {}
            made_for = (params.get("profile"), params.get("seed"))
            if made_for != (profile, seed):
                raise stale(stage, f"made for profile '{made_for[0]}' seed {made_for[1]}, "
                                   f"not profile '{profile}' seed {seed}")
            if not isinstance(man.get("outputs"), dict) or not isinstance(man.get("upstream"), dict):
                raise stale(stage, "written by an earlier version (its manifest records no checksums to verify)")
            manifests[stage] = man
        return manifests[stage]

    closure, todo = set(), list(reads)
    while todo:   # the stages read, directly or through another; earliest first
        todo.sort(key=paths.STAGES.index)
        stage = todo.pop(0)
        if stage not in closure:
            closure.add(stage)
            todo.extend(manifest_of(stage)["upstream"])
    current = {}
    for stage in sorted(closure, key=paths.STAGES.index):   # the earliest stale stage is the one named
        for source, files in manifest_of(stage)["upstream"].items():
            outputs = manifest_of(source)["outputs"]
            changed = sorted(f for f, c in files.items() if outputs.get(f) != c)
            if changed:
                raise stale(stage, f"made from other {source} outputs ({changed[0]} has changed since)")
        if stage not in reads:
            continue
        patterns = reads[stage]
        listed = {f: c for f, c in manifest_of(stage)["outputs"].items() if any(fnmatch(f, p) for p in patterns)}
        if not listed:
            raise stale(stage, f"its manifest lists none of the files stage {reader} reads ({', '.join(patterns)})")
        now = current_checksums(stage, run / stage, listed, patterns)
        changed = sorted(f for f in listed.keys() | now.keys() if listed.get(f) != now.get(f))
        if changed:
            how = "is missing" if changed[0] not in now else "was added" if changed[0] not in listed else "has changed"
            raise stale(stage, f"{changed[0]} {how} since stage {stage} wrote it"
                               + (f" ({len(changed)} files differ)" if len(changed) > 1 else ""))
        current[stage] = now
    return current


class Stage:
    """One notebook's driver: the checked profile, the seed, the device and the stage's folder.

    A notebook makes one (``stage = TrainingStage(profile, seed=seed, device=device,
    data_root=data_root)``), then calls its methods section by section and shows what they
    return; ``run()`` calls the same methods in the same order without a notebook. Making it
    takes the stage's lock and checks its inputs (``check_upstream``); ``write()`` publishes the
    stage's outputs with ``publishing()`` and lets the locks go.

    ``reads``: upstream stage -> the files read of it (patterns). The run seed: see
    ``proloc run --help``; seed s > 0 writes under ``<data_root>/<profile>/seed-<s>/``.
    """
    name: str = ""          # the stage folder: "01_data_assembly", ...
    reads: dict = {}

    def __init__(self, profile: str | Profile, *, seed: int = 0, device: str = "auto", data_root=None):
        self.cfg = profile if isinstance(profile, Profile) else load_profile(profile)
        self.profile = self.cfg.name
        self.seed, self.data_root, self._device, self._resolved = check_seed(seed), data_root, device, None
        self.run_dir = paths.run_dir(self.profile, data_root, seed=self.seed)
        self.out_dir = self.run_dir / self.name
        self.profile_dir = paths.profile_dir(self.profile, data_root)   # images and caches: every seed's
        self.code_version = self.code_version_of()
        self.profile_provenance = copy.deepcopy(self.cfg.get("provenance", {}))   # as a rerun will see it
        self._locks: list[FolderLock] = []
        try:
            self.lock = self.hold(self.out_dir)
            for stage in self.reads:
                self.hold(self.stage_dir(stage), shared=True)
            manifest.recover(self.out_dir)
            self.upstream = check_upstream(self.cfg, self.reads, seed=self.seed, data_root=data_root,
                                           reader=self.name)
            self.open()
        except BaseException:
            self.release()   # a failed start holds nothing (a notebook keeps the failed object around)
            raise

    def open(self) -> None:
        """The stage's own start (inputs read, device checked), once its folder is locked and its
        inputs checked."""

    @property
    def device(self) -> str:
        """The device the profile runs on ("auto": CUDA when available), checked once."""
        if self._resolved is None:
            self._resolved = resolve_device(self._device)
        return self._resolved

    def stage_dir(self, stage: str):
        """Another stage's folder for this profile, run seed and data root."""
        return paths.stage_dir(self.profile, stage, self.data_root, seed=self.seed)

    # -- locks ------------------------------------------------------------------------------------
    def hold(self, folder: Path, *, shared: bool = False) -> FolderLock:
        """Lock ``folder`` for this stage object (exclusive: it writes there) until ``release()``."""
        lock = FolderLock(folder, shared=shared).acquire()
        self._locks.append(lock)
        return lock

    def release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()

    # -- what a rerun compares --------------------------------------------------------------------
    @classmethod
    def code_version_of(cls) -> str:
        return manifest.code_version(cls.__module__, NOTEBOOK_DIR / f"{cls.name}.ipynb")

    @classmethod
    def parameters_for(cls, cfg: Profile, *, seed: int, device: str, data_root=None, **options) -> dict:
        """What the stage's manifest records as its parameters, from the profile and options alone."""
        raise NotImplementedError

    def options(self) -> dict:
        """This stage's options beyond profile, seed, device and data root (``parameters_for``)."""
        return {}

    def parameters(self) -> dict:
        return self.parameters_for(self.cfg, seed=self.seed, device=self.device, data_root=self.data_root,
                                   **self.options())

    def record(self, params: dict) -> dict:
        """The manifest fields a rerun compares (``stage_status``)."""
        return {"upstream": self.upstream, "code_version": self.code_version,
                "stage_key": manifest.stage_key(parameters=params, provenance=self.profile_provenance,
                                                code_version=self.code_version, upstream=self.upstream)}

    @contextlib.contextmanager
    def publishing(self, folder: Path | None = None, *, inputs=(), lock: FolderLock | None = None):
        """``manifest.stage_output`` into ``folder`` (default: the stage's), with the parameters and
        ``record()``; published only while this run still owns the folder."""
        params, lock = self.parameters(), lock or self.lock
        lock.acquire()   # again, when an earlier write() of this object let it go
        with manifest.stage_output(folder or self.out_dir, self.name, params, inputs,
                                   provenance=self.cfg["provenance"], owner=lock) as (tmp, extra):
            extra.update(self.record(params))
            yield tmp, extra

    @classmethod
    def extra_outputs(cls, cfg: Profile, *, seed: int, data_root=None, **options) -> list[Path]:
        """Folders the stage publishes besides its own (notebook 05: the figures)."""
        return []

    def run(self):
        """Every section of the notebook, in order, without the notebook."""
        raise NotImplementedError


def outputs_intact(folder: Path, stage: str) -> bool:
    """Whether ``folder`` holds exactly what its manifest lists (checksums)."""
    try:
        man = manifest.read_manifest(folder)
    except (FileNotFoundError, manifest.ManifestError):
        return False
    listed = man.get("outputs")
    if not isinstance(listed, dict):
        return False
    if stage == "02_embeddings":
        return store_checksums(folder) == listed
    return current_checksums(stage, folder, listed, ()) == listed


def stage_status(cls: type[Stage], cfg: Profile, *, seed: int, device: str, data_root=None, **options) -> str | None:
    """None when stage ``cls`` of this run is up to date (its manifest's ``stage_key`` is the one a
    run would write now, its outputs are intact); else why it must run ("parameters changed", ...).
    ``StaleInput`` when it cannot run: what it reads is missing or stale (``check_upstream``)."""
    upstream = check_upstream(cfg, cls.reads, seed=seed, data_root=data_root, reader=cls.name)
    folder = paths.stage_dir(cfg.name, cls.name, data_root, seed=seed)
    try:
        man = manifest.read_manifest(folder)
    except (FileNotFoundError, manifest.ManifestError):
        return "not built yet"
    params = cls.parameters_for(cfg, seed=seed, device=device, data_root=data_root, **options)
    code = cls.code_version_of()
    key = manifest.stage_key(parameters=params, provenance=cfg.get("provenance", {}), code_version=code,
                             upstream=upstream)
    if man.get("stage_key") != key:
        if man.get("upstream") != upstream:
            return "inputs changed"
        if man.get("code_version") != code:
            return "code changed"
        if json.loads(json.dumps(man.get("parameters"), default=str)) != json.loads(json.dumps(params, default=str)):
            return "parameters changed"
        return "profile changed"
    if not outputs_intact(folder, cls.name):
        return "outputs changed since written"
    for extra in cls.extra_outputs(cfg, seed=seed, data_root=data_root, **options):
        try:
            if manifest.read_manifest(extra).get("stage_key") != key or not outputs_intact(extra, cls.name):
                return f"{extra} changed since written"
        except (FileNotFoundError, manifest.ManifestError):
            return f"{extra} missing"
    return None


# ---------------------------------------------------------------------------------------------
# inputs

@dataclass(kw_only=True)
class StageData:
    """What notebooks 01 and 02 wrote, opened once: tables, label order, stores, manifests."""
    labels: list[str]
    proteins: pd.DataFrame
    images: pd.DataFrame
    seq_store: EmbeddingStore
    img_store: EmbeddingStore
    data_dir: Path
    emb_dir: Path
    data_manifest: dict
    emb_manifest: dict
    note: str = ""                      # provenance line for every table (stage 01's build included)
    _variant_stores: dict = field(default_factory=dict, repr=False)

    def image_store(self, variant: str | None = None) -> EmbeddingStore:
        """The image store, or the one of an image feature variant (``02_embeddings/images-<name>/``)."""
        if variant is None:
            return self.img_store
        if variant not in self._variant_stores:
            path = self.emb_dir / f"images-{variant}"
            if not path.is_dir():
                raise UserError(f"{path}: no image store for the image variant '{variant}' (list it under "
                                "embeddings.image_variants in the profile and run notebook 02)")
            self._variant_stores[variant] = EmbeddingStore(path)
        return self._variant_stores[variant]

    @property
    def eval_targets(self) -> str:
        """Image-level scoring uses each image's own label columns where stage 01 wrote them
        (the paper's image-level setting); protein-level scoring always uses the proteins' labels."""
        return "image" if all(lab in self.images.columns for lab in self.labels) else "protein"

    @property
    def truth(self) -> str:
        """The name of the labels images.parquet carries (stage 01 records it, e.g. ``benchmark_columns``);
        ``image_table`` for stage outputs written before it did."""
        return str(self.data_manifest.get("truth") or "image_table")

    def inputs(self) -> list[Path]:
        """The files a stage manifest lists as its inputs."""
        return [self.data_dir / "proteins.parquet", self.data_dir / "images.parquet", self.emb_dir / manifest.MANIFEST]


def load_stage_data(profile: str, *, data_root=None, seed: int = 0) -> StageData:
    """Open stage 01's tables and stage 02's stores (manifests checked: both stages complete)."""
    data_dir = paths.stage_dir(profile, "01_data_assembly", data_root, seed=seed)
    emb_dir = paths.stage_dir(profile, "02_embeddings", data_root, seed=seed)
    data_man, emb_man = manifest.read_manifest(data_dir), manifest.read_manifest(emb_dir)
    return StageData(labels=list(data_man["labels"]), proteins=pd.read_parquet(data_dir / "proteins.parquet"),
                     images=pd.read_parquet(data_dir / "images.parquet"),
                     seq_store=EmbeddingStore(emb_dir / "sequences"), img_store=EmbeddingStore(emb_dir / "images"),
                     data_dir=data_dir, emb_dir=emb_dir, data_manifest=data_man, emb_manifest=emb_man,
                     note=provenance.provenance_note(data_man.get("provenance") or {}))


def _with_display(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the ``display`` column (the human label of each run id), right after ``model``."""
    frame = frame.drop(columns=["display"], errors="ignore")
    frame.insert(frame.columns.get_loc("model") + 1, "display", runs.display_names(frame["model"]))
    return frame


@dataclass(kw_only=True)
class RunResults:
    """Tidy results of some runs: ``metrics`` (evaluation's columns + ``display``), ``predictions``
    (one row per image and protein per run, seed, split), ``history`` (one row per epoch per run
    and seed), ``models``: run id -> (model, thresholds by level, TrainConfig) of the first seed."""
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    models: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict, repr=False)   # the protein-target datasets (for MIL)

    def _select(self, kinds) -> pd.DataFrame:
        m = self.metrics
        return m if kinds is None or m.empty else m[m["model"].map(runs.kind).isin(kinds)]

    def table(self, *, level: str = "protein", kinds=None) -> pd.DataFrame:
        """The paper's metrics on the test split per run (mean over seeds), rows named by display name;
        ``kinds``: only runs of these kinds (``runs.kind``), e.g. ``("fusion",)``."""
        sel = self._select(kinds)
        if sel.empty:
            return pd.DataFrame()
        return tables.paper_table(sel, level=level)

    def summary(self, *, level: str = "protein", kinds=None) -> pd.DataFrame:
        """'mean ± sd' over seeds (or folds, or re-splits) per run."""
        sel = self._select(kinds)
        if sel.empty:
            return pd.DataFrame()
        return tables.summary_table(sel, level=level)


def _collect(metrics: list, preds: list, hists: list, models=None, datasets=None) -> RunResults:
    def cat(fs):
        return pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()
    m, p = cat(metrics), cat(preds)
    return RunResults(metrics=_with_display(m) if len(m) else m, predictions=_with_display(p) if len(p) else p,
                      history=cat(hists), models=models or {}, datasets=datasets or {})


def combine(*parts: RunResults) -> RunResults:
    """One result set from several (the stage's outputs)."""
    models, datasets = {}, {}
    for part in parts:
        models.update(part.models)
        datasets = datasets or part.datasets
    return _collect([p.metrics for p in parts if len(p.metrics)], [p.predictions for p in parts if len(p.predictions)],
                    [p.history for p in parts if len(p.history)], models, datasets)
