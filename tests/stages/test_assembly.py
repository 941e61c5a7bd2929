"""Stage 01 of the full profile through the offline mirror (``proloc mirror``), on six chosen proteins
of the real Vislocas tables: two paralog pairs whose HPA images are listed under both (SET/SETSIP,
RPL10/RPL10L, train file) and two test proteins (PSME3, whose labels differ in the authors' own test
table on 8 of its 11 images, and TJAP1, whose 2 do not).

The data card must show what each configuration trains on, every protein accounted for, the
test-train homology count and both sets of test labels.
"""
import functools
import json

import pandas as pd
import pytest

from proloc_lib.core.paths import reference_dir
from proloc_lib.data import download, mirror
from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.stages.assembly import AssemblyStage

pytestmark = pytest.mark.skipif(not (reference_dir() / "vislocas" / "data_train.csv").exists(),
                                reason="../shared/reference/vislocas not found")
GENES = {"SET": "ENSG00000119335", "SETSIP": "ENSG00000230667", "RPL10": "ENSG00000147403",
         "RPL10L": "ENSG00000165496", "PSME3": "ENSG00000131467", "TJAP1": "ENSG00000137221"}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cfg = dict(load_profile("full"))
    # six proteins are too few groups for the profile's 5 cross-validation folds
    cfg["data"] = {**cfg["data"], "proteins": list(GENES.values()), "split": {**cfg["data"]["split"], "folds": None}}
    profile = profile_from_dict({**cfg, "profile": "full-six"}, name="full-six")
    fast = functools.partial(download.uniprot_map_ensembl, poll_interval=0.01, retries=1, backoff=0.001)
    with mirror.serve(max_seconds=600) as m, pytest.MonkeyPatch.context() as mp:
        mp.setattr(download, "uniprot_map_ensembl", fast)
        st = AssemblyStage(profile, data_root=root, mirror=m.url, device="cpu")
        st.build()
        st.split()
        card = st.write()
    return st, card


def test_every_protein_is_kept_and_shared_images_stay_under_each(stage):
    st, _ = stage
    assert sorted(st.proteins["protein_name"]) == sorted(GENES)
    acc = st.report["protein_accounting"]
    assert (acc["source_proteins"], acc["kept"], acc["dropped"]) == (6, 6, 0)
    assert acc["per_file"] == {"test": {"source": 2, "kept": 2}, "train": {"source": 4, "kept": 4}}
    # SET/SETSIP share 17 images, RPL10/RPL10L 12; PSME3 has 11, TJAP1 2: 42 images, 71 image rows
    assert st.images["image_id"].nunique() == 42 and len(st.images) == 71
    per = st.images.groupby("protein_id")["image_id"].apply(frozenset)
    assert per[GENES["SET"]] == per[GENES["SETSIP"]] and per[GENES["RPL10"]] == per[GENES["RPL10L"]]
    side = dict(zip(st.proteins["protein_name"], st.proteins["split"]))
    assert side["SET"] == side["SETSIP"] and side["RPL10"] == side["RPL10L"]     # split together
    assert {side["PSME3"], side["TJAP1"]} == {"test"}
    assert dict(zip(st.proteins["protein_name"], st.proteins["benchmark_split"]))["SETSIP"] == "train"


def test_training_sets_truths_and_homology_are_on_the_card(stage):
    st, card = stage
    sets = st.training_sets.set_index("configuration")
    assert sets.loc["authors", ["train_on", "proteins", "images", "image rows"]].tolist() == ["train+val", 4, 29, 58]
    held_out = st.proteins[st.proteins["split"] == "val"]
    assert len(held_out) == 2                                       # one paralog pair is the validation part
    assert sets.loc["corrected", "proteins"] == 2 and sets.loc["corrected", "images"] in (12, 17)
    at = st.report["authors_table"]
    assert (at["image_rows_joined"], at["images_differing"], at["proteins_differing"]) == (13, 8, 1)
    assert at["per_label"]["cytoplasm"] == 8
    cols = [c for c in st.images.columns if c.startswith("authors_table:")]
    assert len(cols) == 5 and st.images.loc[st.images["split"] == "test", cols].notna().all().all()
    hom = st.report["test_train_homology"]
    assert (hom["test_proteins"], hom["compared_with"], hom["at_or_above"], hom["standin_sequences"]) == (2, 4, 0, 4)
    for text in ("## What each configuration trains on", "| authors", "train+val", "## Every protein accounted for",
                 "6 proteins in the source tables: 6 kept, 0 dropped", "listed under 2 proteins at once (SET, SETSIP)",
                 "## Test labels", "differ on 8 images of 1 proteins", "authors_table",
                 "## Test proteins with a close homolog in training", "0 of 2 test proteins",
                 "Only meaningful with real sequences", "longest sequence:"):
        assert text in card, text
    man = json.loads((st.out_dir / "manifest.json").read_text())
    assert man["truth"] == "benchmark_columns"
    back = pd.read_parquet(st.out_dir / "images.parquet")
    assert back[cols].notna().sum().tolist() == [13] * 5
