"""The synthetic IHC tiles: deterministic, well-formed, and stained where the labels say."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from proloc_lib.data.labels import LABELS
from proloc_lib.data.synthetic import (
    _render,
    _stain_concentrations,
    protein_seed,
    render_tile,
    write_protein_images,
)


def onehot(*names):
    return [int(label in names) for label in LABELS]


SEEDS = (0, 1, 2)
BROWN = 0.2  # DAB optical density above which a pixel counts as clearly brown


def dab_and_masks(labels, seed, strength=0.7):
    # Lowest typical strength: the weakest protein must still show its pattern.
    rgb, masks = _render(labels, seed, 256, strength)
    _, dab = _stain_concentrations(rgb)
    return dab, masks


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_pixels():
    a = np.asarray(render_tile(onehot("nucleus", "plasma membrane"), seed=7))
    b = np.asarray(render_tile(onehot("nucleus", "plasma membrane"), seed=7))
    assert np.array_equal(a, b)


def test_different_seeds_different_layout():
    _, m1 = _render(onehot("nucleus"), 1)
    _, m2 = _render(onehot("nucleus"), 2)
    inter = (m1["nucleus"] & m2["nucleus"]).sum()
    union = (m1["nucleus"] | m2["nucleus"]).sum()
    assert inter / union < 0.5
    assert not np.array_equal(np.asarray(render_tile(onehot(), 1)), np.asarray(render_tile(onehot(), 2)))


def test_protein_seed_is_stable_and_distinct():
    # A pinned value: hash() would change with PYTHONHASHSEED and silently change the demo data.
    assert protein_seed(0, "P12345") == protein_seed(0, "P12345") == 1047003210452846274
    assert protein_seed(0, "P12345") != protein_seed(1, "P12345")
    assert protein_seed(0, "P12345") != protein_seed(0, "P12346")


# ----------------------------------------------------------------------------- format

@pytest.mark.parametrize("size", [64, 224, 256])
def test_tile_is_rgb_of_requested_size(size):
    img = render_tile(onehot("cytoplasm"), seed=3, size=size)
    assert img.mode == "RGB" and img.size == (size, size)
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.std() > 5  # not a flat fill


def test_cells_have_blue_nuclei_on_pale_background():
    rgb, m = _render(onehot(), 4)
    bg = rgb[~m["cell"]].astype(float).mean(0)
    nuc = rgb[m["nucleus"]].astype(float).mean(0)
    assert bg.min() > 215 and bg[0] >= bg[2]  # near white, slightly warm
    assert nuc[2] > nuc[0] + 20 and nuc.mean() < bg.mean() - 60  # hematoxylin blue, darker


# ----------------------------------------------------------------------------- patterns

@pytest.mark.parametrize("seed", SEEDS)
def test_nucleus_only_stains_nuclei(seed):
    dab, m = dab_and_masks(onehot("nucleus"), seed)
    assert dab[m["nucleus"]].mean() > 3 * dab[m["cytoplasm"]].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_cytoplasm_only_stains_cytoplasm(seed):
    dab, m = dab_and_masks(onehot("cytoplasm"), seed)
    assert dab[m["cytoplasm"]].mean() > 2.5 * dab[m["nucleus"]].mean()
    # Diffuse: the rim is not singled out.
    inner = m["cytoplasm"] & ~m["rim"]
    assert dab[m["rim"]].mean() < 1.2 * dab[inner].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_membrane_only_stains_cell_rims(seed):
    dab, m = dab_and_masks(onehot("plasma membrane"), seed)
    inner = m["cytoplasm"] & ~m["rim"]
    assert dab[m["rim"]].mean() > 2.5 * dab[inner].mean()
    assert dab[m["rim"]].mean() > 2.5 * dab[m["nucleus"]].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_er_only_stains_near_the_nucleus(seed):
    dab, m = dab_and_masks(onehot("endoplasmic reticulum"), seed)
    near = m["perinuclear"] & ~m["rim"]
    far = m["cytoplasm"] & ~m["perinuclear"] & ~m["rim"]
    assert dab[near].mean() > 1.8 * dab[far].mean()
    assert dab[near].mean() > 1.8 * dab[m["nucleus"]].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_mitochondria_only_is_punctate_in_cytoplasm(seed):
    dab, m = dab_and_masks(onehot("mitochondria"), seed)
    diffuse, _ = dab_and_masks(onehot("cytoplasm"), seed)
    inner = m["cytoplasm"] & ~m["rim"]

    def cv(d):
        return d[inner].std() / d[inner].mean()
    assert cv(dab) > 2 * cv(diffuse)  # dots, not a wash
    assert dab[m["cytoplasm"]].mean() > 1.8 * dab[m["nucleus"]].mean()
    # Dots cover the cytoplasm, not only the perinuclear band.
    far = inner & ~m["perinuclear"]
    assert (dab[far] > BROWN).mean() > 0.5 * (dab[inner] > BROWN).mean()


def test_multi_label_shows_both_patterns():
    dab, m = dab_and_masks(onehot("nucleus", "plasma membrane"), 5)
    inner = m["cytoplasm"] & ~m["rim"]
    assert dab[m["nucleus"]].mean() > 3 * dab[inner].mean()
    assert dab[m["rim"]].mean() > 3 * dab[inner].mean()


def test_unlabelled_protein_is_barely_brown():
    fractions = {}
    for name in LABELS:
        dab, m = dab_and_masks(onehot(name), 6)
        fractions[name] = (dab[m["cell"]] > BROWN).mean()
    dab, m = dab_and_masks(onehot(), 6)
    none = (dab[m["cell"]] > BROWN).mean()
    assert none < 0.1 * min(fractions.values()), (none, fractions)


def test_strength_scales_staining():
    weak, m = dab_and_masks(onehot("cytoplasm"), 8, strength=0.7)
    strong, _ = dab_and_masks(onehot("cytoplasm"), 8, strength=1.3)
    assert strong[m["cytoplasm"]].mean() > 1.4 * weak[m["cytoplasm"]].mean()


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("bad", [[1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0],
                                 [0.5, 0, 0, 0, 0], ["a", 0, 0, 0, 0], [[1, 0, 0, 0, 0]]])
def test_bad_labels_raise(bad):
    with pytest.raises(ValueError):
        render_tile(bad, seed=0)


def test_bad_labels_name_the_protein(tmp_path):
    with pytest.raises(ValueError, match="P99999"):
        write_protein_images("P99999", [1, 1], tmp_path, 1, base_seed=0)


def test_bad_sizes_and_counts_raise(tmp_path):
    with pytest.raises(ValueError):
        render_tile(onehot(), seed=0, size=63)
    with pytest.raises(ValueError):
        write_protein_images("P1", onehot(), tmp_path, 0, base_seed=0)
    with pytest.raises(ValueError):
        write_protein_images("P1", onehot(), tmp_path, 1, base_seed=0, size=32)


# ----------------------------------------------------------------------------- files

def test_write_protein_images_jpegs_resumable(tmp_path):
    out = tmp_path / "imgs"
    labels = onehot("mitochondria", "nucleus")
    paths = write_protein_images("P1", labels, out, 3, base_seed=11, size=128)
    assert [p.name for p in paths] == ["P1_0.jpg", "P1_1.jpg", "P1_2.jpg"]
    assert sorted(os.listdir(out)) == ["P1_0.jpg", "P1_1.jpg", "P1_2.jpg"]  # no temp files
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (128, 128)
            arrays.append(np.asarray(im))
    assert not np.array_equal(arrays[0], arrays[1])  # same protein, different tiles

    mtimes = [p.stat().st_mtime_ns for p in paths]
    # Damage one file: a rerun rewrites only that one.
    paths[1].write_bytes(b"<html>not an image</html>")
    again = write_protein_images("P1", labels, out, 3, base_seed=11, size=128)
    assert again == paths
    assert [p.stat().st_mtime_ns for p in (paths[0], paths[2])] == [mtimes[0], mtimes[2]]
    with Image.open(paths[1]) as im:
        assert im.size == (128, 128)
        assert np.abs(np.asarray(im).astype(int) - arrays[1]).mean() < 1  # same tile again
    assert sorted(os.listdir(out)) == ["P1_0.jpg", "P1_1.jpg", "P1_2.jpg"]


def test_write_protein_images_deterministic_across_dirs(tmp_path):
    a = write_protein_images("Q9", onehot("cytoplasm"), tmp_path / "a", 2, base_seed=3, size=96)
    b = write_protein_images("Q9", onehot("cytoplasm"), tmp_path / "b", 2, base_seed=3, size=96)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


# -- file modes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_synthetic_images_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = write_protein_images("P1", [1, 0, 0, 1, 0], tmp_path, 2, 0, size=64)
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode, mode]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P1_0.jpg", "P1_1.jpg"]   # no temporary file left
