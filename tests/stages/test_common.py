"""The ``Stage`` base: a stage checks that what it reads is what its upstream manifests describe
(same profile and run seed, unchanged since, made from the current outputs of theirs), names the
stale stage and the command that rebuilds it; a stage owns its folder while it runs."""
from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from proloc_lib.core import manifest, paths
from proloc_lib.core.locks import FolderLock, StageBusy
from proloc_lib.features.store import store_checksums
from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.stages.assembly import AssemblyStage
from proloc_lib.stages.common import StaleInput, check_upstream
from proloc_lib.stages.figures import FiguresStage
from proloc_lib.stages.training import TrainingStage

SMOKE = load_profile("smoke")
TABLES = ("proteins.parquet", "images.parquet")


def make_stage(root, stage, files: dict, *, upstream: dict, seed=0, profile="smoke", store=False) -> dict:
    """A stage folder as a run writes it: files, then a manifest with outputs and upstream checksums."""
    folder = paths.stage_dir(profile, stage, root, seed=seed)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    man = manifest.build_manifest(stage, {"profile": profile, "seed": seed}, outputs_dir=folder,
                                  outputs=store_checksums(folder) if store else None, extra={"upstream": upstream})
    (folder / manifest.MANIFEST).write_text(json.dumps(man))
    return man["outputs"]


def pick(outputs: dict, names) -> dict:
    return {f: c for f, c in outputs.items() if f in names or f.startswith(tuple(n.rstrip("*") for n in names))}


def make_run(root, *, split="A", seed=0):
    """Stages 01..04 of one run of smoke, each made from the others' current outputs."""
    o1 = make_stage(root, "01_data_assembly", {t: f"{t} split {split}" for t in TABLES}, upstream={}, seed=seed)
    o2 = make_stage(root, "02_embeddings", {"sequences/store.json": "{}", "images/store.json": "{}",
                                            f"images/shard-0_1-{'a' * 32}.safetensors": "x"},
                    upstream={"01_data_assembly": pick(o1, TABLES)}, seed=seed, store=True)
    up = {"01_data_assembly": pick(o1, TABLES), "02_embeddings": o2}
    make_stage(root, "03_training", {"metrics.csv": f"m {split}", "history.csv": "h", "predictions.parquet": "p",
                                     "checkpoint-corrected/model.safetensors": "w"}, upstream=up, seed=seed)
    make_stage(root, "04_baselines", {"metrics.csv": "b", "predictions.parquet": "bp"}, upstream=up, seed=seed)


def check(root, reader=FiguresStage, seed=0):
    return check_upstream(SMOKE, reader.reads, seed=seed, data_root=root, reader=reader.name)


def command(root, first):
    stages = paths.STAGES[paths.STAGES.index(first):]
    return (f"`proloc run --profile smoke --seed 0 --data-root {root.resolve()} "
            f"--only {','.join(s[:2] for s in stages)}`")


def test_consistent_stages_pass_and_give_what_was_read(tmp_path):
    make_run(tmp_path)
    read = check(tmp_path)
    assert set(read) == {"01_data_assembly", "02_embeddings", "03_training", "04_baselines"}
    assert set(read["01_data_assembly"]) == set(TABLES)
    assert set(read["03_training"]) == {"metrics.csv", "history.csv", "predictions.parquet",
                                        "checkpoint-corrected/model.safetensors"}


def test_stage_01_rebuilt_with_another_split_makes_later_stages_stale(tmp_path):
    """Notebook 05 alone after 01 was rebuilt: refused, naming the first stage made from the old tables."""
    make_run(tmp_path)
    make_stage(tmp_path, "01_data_assembly", {t: f"{t} split B" for t in TABLES}, upstream={})
    with pytest.raises(StaleInput) as err:
        check(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 2
    assert msg == (f"{tmp_path.resolve()}/smoke/02_embeddings: made from other 01_data_assembly outputs "
                   f"(images.parquet has changed since); rebuild it with {command(tmp_path, '02_embeddings')}")


def test_a_file_changed_in_place_names_its_stage(tmp_path):
    make_run(tmp_path)
    (paths.stage_dir("smoke", "03_training", tmp_path) / "metrics.csv").write_text("edited")
    with pytest.raises(StaleInput, match=r"03_training: metrics.csv has changed since stage 03_training wrote it; "
                                         r"rebuild it with `proloc run .* --only 03,04,05`"):
        check(tmp_path)
    # a shard added to a store after its manifest was written (e.g. by `proloc extract`)
    make_run(tmp_path / "b")
    (paths.stage_dir("smoke", "02_embeddings", tmp_path / "b") / "images" / f"shard-0_1-{'b' * 32}.safetensors") \
        .write_text("y")
    with pytest.raises(StaleInput, match=r"02_embeddings: images/shard-0_1-b+\.safetensors was added since"):
        check(tmp_path / "b")


@pytest.mark.parametrize("problem, expected", [
    ("missing", r"04_baselines: stage 04_baselines of profile 'smoke' \(seed 0\) has not completed; "
                r"rebuild it with `proloc run --profile smoke --seed 0 --data-root \S+ --only 04,05`"),
    ("seed", r"01_data_assembly: made for profile 'smoke' seed 1, not profile 'smoke' seed 0; "
             r".*--only 01,02,03,04,05`"),
    ("old", r"03_training: written by an earlier version"),
])
def test_missing_foreign_and_old_stages_are_named(tmp_path, problem, expected):
    make_run(tmp_path)
    if problem == "missing":
        (paths.stage_dir("smoke", "04_baselines", tmp_path) / manifest.MANIFEST).unlink()
    elif problem == "seed":    # seed 1's outputs where seed 0's belong
        path = paths.stage_dir("smoke", "01_data_assembly", tmp_path) / manifest.MANIFEST
        man = json.loads(path.read_text())
        man["parameters"]["seed"] = 1
        path.write_text(json.dumps(man))
    else:                      # a manifest of an earlier version: no checksums of what it read
        path = paths.stage_dir("smoke", "03_training", tmp_path) / manifest.MANIFEST
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "upstream"}))
    with pytest.raises(StaleInput, match=expected):
        check(tmp_path)


def test_each_run_seed_reads_its_own_folder(tmp_path):
    make_run(tmp_path, seed=3)
    assert set(check(tmp_path, seed=3)) == set(FiguresStage.reads)
    assert (tmp_path / "smoke" / "seed-3" / "03_training" / "metrics.csv").is_file()
    with pytest.raises(StaleInput, match="smoke/01_data_assembly: stage 01_data_assembly of profile 'smoke' "
                                         r"\(seed 0\) has not completed"):
        check(tmp_path, seed=0)


def test_a_stage_that_cannot_start_holds_no_lock(tmp_path):
    with pytest.raises(StaleInput, match="01_data_assembly: stage 01_data_assembly .* has not completed"):
        TrainingStage("smoke", seed=0, device="cpu", data_root=tmp_path)
    with FolderLock(paths.stage_dir("smoke", "03_training", tmp_path)) as lock:   # free again
        assert lock.state == "held"


# -- two runs of a stage at the same moment ----------------------------------------------------------
RACE = profile_from_dict({**SMOKE, "profile": "race", "data": {**SMOKE["data"], "n_proteins": 40,
                                                                  "images_per_protein": 1, "image_size": 64}},
                         name="race")


def _race(root, seeds) -> list:
    """One thread per seed makes and runs stage 01 at the same moment; what each ended with."""
    barrier, results = threading.Barrier(len(seeds)), [None] * len(seeds)

    def run(i, seed):
        barrier.wait()
        try:
            stage = AssemblyStage(RACE, seed=seed, device="cpu", data_root=root)
            stage.build(), stage.split(), stage.write()     # run() without the audit of the reference files
            results[i] = "published"
        except StageBusy as exc:
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(seeds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _published_seed(root, seed) -> int:
    """The run seed that made a published stage 01, read from its tables (each synthetic image file
    name carries the seed that drew it), after checking that the manifest says the same."""
    folder = paths.stage_dir("race", "01_data_assembly", root, seed=seed)
    man = manifest.read_manifest(folder)
    assert man["outputs"] == manifest.output_checksums(folder)                 # whole: exactly what it lists
    images = pd.read_parquet(folder / "images.parquet")
    made_by = {int(p.split("_seed")[1].split("_")[0]) for p in images["path"]}
    assert made_by == {man["parameters"]["seed"]}
    return man["parameters"]["seed"]


@pytest.mark.slow
def test_two_runs_of_one_stage_at_once_never_mix(tmp_path):
    for round_ in range(3):     # the same seed: one publishes, the other is refused in one line
        results = _race(tmp_path, [0, 0])
        assert sorted(map(str, results)).count("published") == 1, results
        loser = next(r for r in results if r != "published")
        text = str(loser)
        assert "\n" not in text and text.startswith(f"{paths.stage_dir('race', '01_data_assembly', tmp_path)} "
                                                   "is being written by pid")
        assert _published_seed(tmp_path, 0) == 0
    results = _race(tmp_path, [1, 2])   # other seeds: their own folders, both published
    assert results == ["published", "published"]
    assert (_published_seed(tmp_path, 1), _published_seed(tmp_path, 2)) == (1, 2)
    assert _published_seed(tmp_path, 0) == 0
