"""Synthetic IHC-like tiles for the offline demo profile.

Real Human Protein Atlas images cannot be downloaded offline, so the demo profile renders
stand-ins: hematoxylin-blue nuclei in cells on a pale background, with brown DAB staining
laid out according to the protein's five labels (nucleus: nuclear fill; cytoplasm: diffuse
fill; plasma membrane: cell rim; endoplasmic reticulum: perinuclear network; mitochondria:
cytoplasmic puncta). They exist only so every stage can run end to end without a network;
every number computed from them is a property of this generator, not of biology, and must
be labelled synthetic wherever it is reported.

Colours are mixed in optical-density space (Beer-Lambert), as stained tissue absorbs
light, and everything is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from proloc_lib.core.fileio import publish
from proloc_lib.data.images import BadImageError, load_image
from proloc_lib.data.labels import LABELS

# Stain optical-density vectors (Ruifrok & Johnston style), normalised to unit length.
_H_OD = np.array([0.65, 0.70, 0.29])
_H_OD = _H_OD / np.linalg.norm(_H_OD)
_DAB_OD = np.array([0.27, 0.57, 0.78])
_DAB_OD = _DAB_OD / np.linalg.norm(_DAB_OD)
# Pale, slightly warm slide background (about RGB 243, 238, 228).
_BG_OD = np.array([0.021, 0.030, 0.049])
_CYTO, _ER, _MITO, _NUC, _PM = (LABELS.index(n) for n in (
    "cytoplasm", "endoplasmic reticulum", "mitochondria", "nucleus", "plasma membrane"))
MIN_SIZE = 64


# ----------------------------------------------------------------------------- helpers

def _check_labels(labels, protein_id: str | None = None) -> np.ndarray:
    who = f" for protein {protein_id!r}" if protein_id is not None else ""
    try:
        arr = np.asarray(labels, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"labels{who} must be {len(LABELS)} values in {{0, 1}}, got {labels!r}") from None
    if arr.shape != (len(LABELS),) or not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"labels{who} must be {len(LABELS)} values in {{0, 1}} "
                         f"(order {LABELS}), got {labels!r}")
    return arr.astype(np.int8)


@lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """Row-normalised Gaussian matrix: K @ img @ K.T is a separable blur with no wrap-around."""
    x = np.arange(n)
    k = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    return (k / k.sum(1, keepdims=True)).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    k = _blur_matrix(img.shape[0], float(round(sigma, 3)))
    if img.ndim == 2:
        return k @ img @ k.T
    return np.einsum("ij,jkc,lk->ilc", k, img, k, optimize=True)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std spatially correlated noise (correlation length ~ sigma px)."""
    z = _blur(rng.standard_normal((n, n)).astype(np.float32), sigma)
    return (z - z.mean()) / (z.std() + 1e-8)


def _ellipse_r(yy, xx, cy, cx, a, b, theta, wobble_amp, wobble_k, wobble_phase):
    """Normalised elliptical radius: < 1 inside; the wobble makes outlines irregular.

    Object parameters broadcast against the pixel grids: shape (n, 1, 1) evaluates n objects
    at every pixel, shape (H, W) one (per-pixel gathered) object. wobble_amp and
    wobble_phase carry one extra trailing axis, one entry per harmonic in wobble_k.
    """
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    r = np.sqrt(u * u + v * v) + 1e-6
    # sin(k*phi + p) from powers of (cos phi + i sin phi), by repeated multiplication:
    # far cheaper than arctan2 + sin over (n_cells, H, W).
    c1, s1 = u / r, v / r
    ck, sk = c1, s1
    wob = 1.0
    for k_now in range(1, max(wobble_k) + 1):
        if k_now > 1:
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        if k_now in wobble_k:
            i = wobble_k.index(k_now)
            wob = wob + wobble_amp[..., i] * (sk * np.cos(wobble_phase[..., i])
                                              + ck * np.sin(wobble_phase[..., i]))
    return (r / wob).astype(np.float32)


def _layout(rng: np.random.Generator, size: int) -> dict:
    """Cells on a jittered grid with some slots left empty: 6-20 cells of varied size."""
    n_cells = int(rng.integers(6, 21))
    side = int(np.ceil(np.sqrt(n_cells * rng.uniform(1.05, 1.5))))
    slots = rng.choice(side * side, size=n_cells, replace=False)
    pitch = size / side
    cy = (slots // side + 0.5 + rng.uniform(-0.3, 0.3, n_cells)) * pitch
    cx = (slots % side + 0.5 + rng.uniform(-0.3, 0.3, n_cells)) * pitch
    radius = pitch * rng.uniform(0.48, 0.7, n_cells)
    aspect = rng.uniform(0.8, 1.25, n_cells)
    cell = dict(cy=cy, cx=cx, a=radius * aspect, b=radius / aspect,
                theta=rng.uniform(0, np.pi, n_cells),
                wobble_amp=rng.uniform(0.0, 0.08, (n_cells, 2)), wobble_k=(3, 5),
                wobble_phase=rng.uniform(0, 2 * np.pi, (n_cells, 2)))
    # Nucleus: smaller ellipse, a little off-centre, inside its cell.
    nr = radius * rng.uniform(0.3, 0.42, n_cells)
    naspect = rng.uniform(0.75, 1.3, n_cells)
    off = radius * rng.uniform(0, 0.15, n_cells)
    ang = rng.uniform(0, 2 * np.pi, n_cells)
    nuc = dict(cy=cy + off * np.sin(ang), cx=cx + off * np.cos(ang), a=nr * naspect, b=nr / naspect,
               theta=rng.uniform(0, np.pi, n_cells),
               wobble_amp=rng.uniform(0.0, 0.04, (n_cells, 2)), wobble_k=(2, 4),
               wobble_phase=rng.uniform(0, 2 * np.pi, (n_cells, 2)))

    def f32(d):
        return {k: (v if k == "wobble_k" else np.asarray(v, np.float32)) for k, v in d.items()}
    return dict(n=n_cells, radius=radius.astype(np.float32), cell=f32(cell), nuc=f32(nuc))


def _render(labels, seed: int, size: int = 256, strength: float | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one tile; returns (uint8 RGB array, boolean masks by compartment).

    Masks: "cell", "nucleus", "cytoplasm" (cell minus nucleus), "rim" (cell boundary band),
    "perinuclear" (cytoplasm close to the nucleus). Used by render_tile and by the tests.
    """
    lab = _check_labels(labels)
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    size = int(size)
    rng = np.random.default_rng(seed)
    if strength is None:
        strength = float(rng.uniform(0.7, 1.3))
    if not (np.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a positive number, got {strength!r}")
    px = size / 256.0  # length scale so tiles of other sizes look alike

    lay = _layout(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Each pixel belongs to the cell with the smallest normalised radius (a power-diagram-like
    # tessellation), so neighbouring cells share straight-ish walls as in tissue. Cells are
    # evaluated only in their bounding boxes; beyond it r > far, which is all we need.
    far = np.float32(1.5)
    r1 = np.full((size, size), far, np.float32)
    r2 = r1.copy()
    own = np.zeros((size, size), np.intp)
    cp = lay["cell"]
    for i in range(lay["n"]):
        half = far * max(cp["a"][i], cp["b"][i]) * (1 + cp["wobble_amp"][i].sum())
        y0, y1 = (int(np.clip(cp["cy"][i] + d, 0, size)) for d in (-half, half + 1))
        x0, x1 = (int(np.clip(cp["cx"][i] + d, 0, size)) for d in (-half, half + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        box = np.s_[y0:y1, x0:x1]
        r = _ellipse_r(yy[box], xx[box], **{k: (v if k == "wobble_k" else v[i])
                                            for k, v in cp.items()})
        b1, b2, bo = r1[box], r2[box], own[box]
        closer = r < b1
        r2[box] = np.where(closer, b1, np.minimum(b2, r))
        own[box] = np.where(closer, i, bo)
        r1[box] = np.minimum(b1, r)
    cell = r1 < 1.0
    rad_own = lay["radius"][own]
    # Approximate pixel distance to the cell outline: to the free edge or to the shared wall.
    edge_dist = np.minimum((1.0 - r1) * rad_own, (r2 - r1) * rad_own / 2.0)
    edge_dist = np.where(cell, edge_dist, 0.0).astype(np.float32)

    # Only the owning cell's nucleus matters at a pixel: gather its parameters per pixel.
    per_px = {k: (v if k == "wobble_k" else v[own]) for k, v in lay["nuc"].items()}
    r_nuc = _ellipse_r(yy, xx, **per_px)
    nucleus = cell & (r_nuc < 1.0) & (edge_dist > 2.5 * px)
    cyto = cell & ~nucleus
    rim_w = max(2.2 * px, 1.2)  # floors keep small tiles legible
    rim = cell & (edge_dist < rim_w)
    perinuc = cyto & (r_nuc < 1.7)
    masks = dict(cell=cell, nucleus=nucleus, cytoplasm=cyto, rim=rim, perinuclear=perinuc)

    fine = _smooth_noise(rng, size, 1.0 * px)
    mid = _smooth_noise(rng, size, 3.0 * px)
    cellf, nucf, cytof = (m.astype(np.float32) for m in (cell, nucleus, cyto))

    # Hematoxylin: dark textured nuclei with a slightly denser envelope, faint counterstain
    # in cytoplasm. Per-cell darkness varies as in real sections.
    h_cell = rng.uniform(0.55, 0.85, lay["n"])[own]
    envelope = np.exp(-((1.0 - r_nuc) / 0.12) ** 2)
    h = nucf * h_cell * (0.8 + 0.18 * fine + 0.25 * envelope) + cytof * (0.05 + 0.015 * mid)

    # DAB: each labelled compartment adds its own pattern, scaled by the protein's strength.
    dab = cellf * 0.02  # faint non-specific background, the whole story for all-zero proteins
    if lab[_NUC]:
        dab = dab + nucf * 0.6 * (0.85 + 0.12 * fine)
        h = h * (1.0 - 0.6 * nucf)  # dense nuclear DAB hides the counterstain
    if lab[_CYTO]:
        dab = dab + cytof * 0.36 * np.clip(0.8 + 0.2 * mid + 0.08 * fine, 0.3, None)
    if lab[_PM]:
        soft_rim = np.exp(-(edge_dist / rim_w) ** 2) * cellf
        dab = dab + soft_rim * 0.75 * np.clip(0.85 + 0.15 * mid, 0.4, None)
    if lab[_ER]:
        # Ridges of a smooth random field (its zero contours) form a net; confine it to a
        # band around the nucleus that fades out with distance, plus the nuclear envelope.
        net = np.exp(-(_smooth_noise(rng, size, 1.8 * px) / 0.4) ** 2)
        band = np.clip(1.0 - (r_nuc - 1.0) / 1.1, 0.0, 1.0) * cytof
        ring = np.exp(-((r_nuc - 1.08) / 0.1) ** 2) * cytof
        dab = dab + 0.7 * band * (0.15 + 0.85 * net) + 0.25 * ring
    if lab[_MITO]:
        # Sparse impulses blurred into ~2 px dots, scattered over the whole cytoplasm.
        sig = max(0.9 * px, 0.6)
        density = min(0.025 / px ** 2, 0.06)
        dots = ((rng.random((size, size)) < density) & cyto).astype(np.float32)
        dots = np.clip(_blur(dots, sig) * (2 * np.pi * sig ** 2) * 1.3, 0, 1)
        dab = dab + 0.9 * dots + cytof * 0.04
    dab = dab * strength

    # Beer-Lambert mixing, slight optical blur, sensor noise, then back to 8-bit RGB.
    od = (_BG_OD * rng.uniform(0.8, 1.2))[None, None, :] \
        + h[..., None] * _H_OD + dab[..., None] * _DAB_OD
    od = _blur(od.astype(np.float32), rng.uniform(0.5, 0.9) * px)
    od = od + rng.normal(0, 0.012, od.shape)
    rgb = 255.0 * np.power(10.0, -np.clip(od, 0, None))
    rgb = np.clip(rgb + rng.normal(0, 1.5, rgb.shape), 0, 255).round().astype(np.uint8)
    return rgb, masks


def _stain_concentrations(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour deconvolution of an RGB array into (hematoxylin, DAB) OD maps."""
    od = -np.log10((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)
    third = np.cross(_H_OD, _DAB_OD)
    m = np.stack([_H_OD, _DAB_OD, third / np.linalg.norm(third)])  # rows: stain vectors
    conc = od.reshape(-1, 3) @ np.linalg.inv(m)
    conc = conc.reshape(od.shape)
    return conc[..., 0], conc[..., 1]


def _mix(*parts) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# ----------------------------------------------------------------------------- public API

def render_tile(labels: Sequence[int] | np.ndarray, seed: int, size: int = 256,
                strength: float | None = None) -> Image.Image:
    """One RGB tile (size x size) whose DAB pattern follows the 5-long 0/1 `labels`.

    `strength` scales all DAB staining (about 0.7-1.3 is typical); None draws it from the seed.
    """
    rgb, _ = _render(labels, seed, size, strength)
    return Image.fromarray(rgb)


def protein_seed(base_seed: int, protein_id: str) -> int:
    """Stable per-protein seed (SHA-256 of base seed and id; unlike hash(), not salted per run)."""
    return _mix("protein", int(base_seed), str(protein_id))


def write_protein_images(protein_id: str, labels, out_dir: str | Path, n_images: int,
                         base_seed: int, size: int = 256, quality: int = 90, *, name_tag: str = "") -> list[Path]:
    """Render n_images tiles for one protein and save them as JPEGs f"{protein_id}{name_tag}_{k}.jpg".

    All tiles of a protein share its labels and staining strength; layout and noise differ.
    Each file is written to a temporary name in out_dir and moved into place, and files that
    already exist and decode at the requested size are kept, so reruns are resumable. A kept
    file is not checked against ``base_seed``: key the names by it (the demo passes
    ``name_tag="_seed<seed>"``) or give each seed its own ``out_dir``.
    """
    lab = _check_labels(labels, protein_id)
    pid = str(protein_id)
    if not pid or "/" in pid or "\\" in pid or pid in (".", "..") or "/" in name_tag or "\\" in name_tag:
        raise ValueError(f"protein_id must be a plain file-name stem, got {protein_id!r}")
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pseed = protein_seed(base_seed, pid)
    strength = float(np.random.default_rng(pseed).uniform(0.7, 1.3))

    paths = []
    for k in range(int(n_images)):
        path = out_dir / f"{pid}{name_tag}_{k}.jpg"
        paths.append(path)
        if path.exists():
            try:
                if load_image(path).size == (size, size):
                    continue
            except BadImageError:
                pass  # truncated or foreign file: render it again
        img = render_tile(lab, _mix("image", pseed, k), size=size, strength=strength)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=out_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, format="JPEG", quality=int(quality))
            publish(tmp, path)   # mkstemp made it 0600: the user's umask decides the final mode
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return paths
