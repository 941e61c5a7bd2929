"""Label mapping: every class mapped explicitly, the reference labels reproduced, unknown locations named."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.paths import project_path
from proloc_lib.data.labels import (
    LABELS,
    LabelMap,
    UnknownLocationError,
    add_label_columns,
)

SCL_MAP = project_path("data/mappings/scl2205_to_proloc5.yaml")
HPA_MAP = project_path("data/mappings/hpa_to_proloc5.yaml")


def test_every_scldata_class_is_mapped_explicitly():
    import scldata.loader

    lm = LabelMap.load(SCL_MAP)
    classes = set(scldata.loader.load()["scl"])
    parts = {p for c in classes for p in lm.split(c)}
    assert parts <= set(lm.mapping), parts - set(lm.mapping)
    assert lm.vector("Cytoplasm;Nucleus").tolist() == [1, 0, 0, 1, 0]
    assert lm.vector("Mitochondrion").tolist() == [0, 0, 1, 0, 0]
    assert lm.vector("ER").tolist() == [0, 1, 0, 0, 0]
    assert lm.vector("Membrane").tolist() == [0, 0, 0, 0, 1]
    assert lm.vector("Secreted").sum() == 0 and lm.unmapped("Secreted") == ["secreted"]


def test_hpa_mapping_reproduces_reference_labels_on_every_row(reference_dir):
    lm = LabelMap.load(HPA_MAP)
    df = pd.read_csv(reference_dir / "proloc_ihs_test.csv")
    assert lm.labels == LABELS
    np.testing.assert_array_equal(lm.matrix(df["locations"]), df[LABELS].to_numpy())


def test_unknown_location_is_an_error_naming_it_and_the_row():
    lm = LabelMap.load(HPA_MAP)
    df = pd.DataFrame({"locations": ["cytosol", "cytosol;golgi body"]})
    with pytest.raises(UnknownLocationError, match=r"golgi body.*row 1"):
        add_label_columns(df, "locations", lm)


def test_check_known_lists_every_unknown_location_at_once():
    lm = LabelMap.load(HPA_MAP)
    locs = pd.Series(["cytosol;golgi body", "golgi body", "mitochondria", "x-bodies;nucleoplasm"],
                     index=["a.csv row 0", "a.csv row 1", "a.csv row 2", "b.csv row 0"])
    with pytest.raises(UnknownLocationError) as err:
        lm.check_known(locs, where="at")
    msg = str(err.value)
    assert "2 location(s) unknown" in msg and lm.id in msg
    assert "'golgi body' x2 (at a.csv row 0, a.csv row 1)" in msg and "'x-bodies' x1 (at b.csv row 0)" in msg
    lm.check_known(locs.iloc[[2]])  # all known: passes


def test_hpa_map_knows_the_vislocas_vocabulary():
    # the 35 HPA locations Vislocas' prepareData/IHC code lists, and the coarse names it writes
    # in place of merged location strings
    hpa35 = ["actin filaments", "aggresome", "cell junctions", "centriolar satellite", "centrosome",
             "cleavage furrow", "cytokinetic bridge", "cytoplasmic bodies", "cytosol", "endoplasmic reticulum",
             "endosomes", "focal adhesion sites", "golgi apparatus", "intermediate filaments", "kinetochore",
             "lipid droplets", "lysosomes", "microtubule ends", "microtubules", "midbody", "midbody ring",
             "mitochondria", "mitotic chromosome", "mitotic spindle", "nuclear bodies", "nuclear membrane",
             "nuclear speckles", "nucleoli", "nucleoli fibrillar center", "nucleoli rim", "nucleoplasm",
             "peroxisomes", "plasma membrane", "rods & rings", "vesicles"]
    lm = LabelMap.load(HPA_MAP)
    lm.check_known(pd.Series(hpa35 + LABELS))
    assert lm.vector("cytoplasm").tolist() == [1, 0, 0, 0, 0]
    assert lm.vector("Nucleus;Plasma membrane").tolist() == [0, 0, 0, 1, 1]
    assert lm.vector("midbody;kinetochore").tolist() == [0, 0, 0, 0, 0]  # known, outside the five


def test_missing_locations_column_is_named():
    with pytest.raises(KeyError, match="locations"):
        add_label_columns(pd.DataFrame({"loc": ["x"]}), "locations", LabelMap.load(HPA_MAP))


