"""Predict the five locations of new proteins with a trained fusion checkpoint.

    proloc predict --checkpoint DIR --fasta FILE --images DIR [--out CSV]
                   [--device auto] [--batch-size N] [--labels A,B,...] [--debug]

The checkpoint (``checkpoint.Checkpoint``: ``model.safetensors`` + ``config.json``) is loaded
without pickle and validated in ``checkpoint.py`` (labels and their order, allow-listed encoder
keys, no file names). Both encoders are re-created from the checkpoint's ``encoders`` section
and must reproduce the fingerprints stored at training time, so features are computed by the
very models (and preprocessing) the fusion model was trained on.

Images rule (``--images DIR``), for each FASTA id ``P``:

* every image file directly inside the folder ``DIR/P/``, and
* every file ``DIR/P.<ext>`` or ``DIR/P_<anything>.<ext>`` (a file that fits several ids
  goes to the longest one, so ``A_1_x.jpg`` belongs to ``A_1``, not ``A``),

where ``<ext>`` is jpg, jpeg, png, tif or tiff (any case); hidden files are ignored. An id that
is not a plain file name (``../x``, ``a/b``, ``..``) is never used as a path: that protein gets
an error row. Image files under ``DIR`` that no id claims are listed on stderr (and in
``DataFrame.attrs["unmatched_images"]``), never ignored in silence.

Each image is handled on its own: 16-bit and float images are scaled to 8 bits (noted in the
row), unreadable files and decompression bombs are skipped with their reason in the row; the
other images and proteins go on. Each protein's sequence is embedded once (truncated to
``max_residues``, or in windows, as the checkpoint says; either is reported in the row and on
stderr); the model runs once per image with the sequence repeated, and the image probabilities
are averaged per protein, as in the protein-level evaluation. Calls use the checkpoint's
per-label thresholds with the rule the checkpoint was evaluated with: ``prob >= threshold`` for
tuned thresholds, ``prob > threshold`` for the fixed 0.5 of the published code (``metrics.binarize``).

Output: one row per FASTA record, in file order; the columns are ``OUTPUT_COLUMNS`` (also the
``--help`` epilog). Label names in column names have spaces replaced by underscores
(``prob_endoplasmic_reticulum``); ``predicted`` keeps the names as they are. The CSV holds
probabilities rounded to ``PROB_DECIMALS`` (calls are made before rounding); beside it,
``<out>.json`` records the label order, thresholds, call rule, column meanings and the
checkpoint's provenance (``output_description``).

Images unlike the training images: the checkpoint records the size and intensity of a sample of
its training images (``training_images``); an input image more than ``SIDE_RATIO`` times larger
or smaller on its long side than their median, or with a mean intensity more than
``INTENSITY_MARGIN`` grey levels outside their range, is named in the row's ``warnings`` and on
stderr (the model still predicts it). Checkpoints without that record get a note, no comparison.

Command line: errors print one line and exit 2 (bad arguments or files) or 1 (nothing could be
predicted, or a download failed); 130 when interrupted; ``--debug`` shows the traceback. The
``--out`` file is checked before any work and written whole or not at all.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from proloc_lib.core.errors import RunFailed, UserError
from proloc_lib.core.fileio import full_disk_as_error, publish, write_text
from proloc_lib.core.network import OfflineError
from proloc_lib.core.progress import bar as progress_bar
from proloc_lib.core.runtime import resolve_device
from proloc_lib.data.images import CONVERSION_NOTE, BadImageError, image_statistics, load_image
from proloc_lib.data.labels import LABELS
from proloc_lib.data.sequences import read_fasta
from proloc_lib.evaluation.metrics import binarize
from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
from proloc_lib.features.image import crop_grid, draft_size
from proloc_lib.features.sequence import embed_sequence_long
from proloc_lib.features.store import STORE_DTYPE
from proloc_lib.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    read_config,
    trained_end_token,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# Keys the feature store adds to the sequence fingerprint (extract_sequences): they come from
# the checkpoint's encoders section, not from the encoder object.
STORE_SEQUENCE_KEYS = ("max_residues", "long_policy")
# A pretrained ProtT5 runs in fp16 on GPU and fp32 on CPU; features were stored in fp16 either
# way, so a dtype-only difference is reported but does not block prediction on another device.
TOLERATED_KEYS = ("dtype",)
_UNSET = object()
read_checkpoint_config = read_config  # the validation lives in checkpoint.py (one place)
PROB_DECIMALS = 4        # a probability to 1e-4 is finer than any difference a threshold makes here
SIDE_RATIO = 2.0         # long side more than 2x from the training images' median: warn
INTENSITY_MARGIN = 25.5  # grey levels (10% of 255) outside the training images' mean-intensity range: warn

# every output column, in order (<label>: the label name with spaces as underscores)
OUTPUT_COLUMNS = {
    "protein_id": "the FASTA record's id (first word of its header)",
    "n_images": "images of the protein that were used",
    "prob_<label>": f"probability of the location: mean over the protein's images of the model's sigmoid output "
                    f"(CSV: rounded to {PROB_DECIMALS} decimals)",
    "call_<label>": "1 if the location is called (probability against threshold_<label> by the rule in "
                    "<out>.json, before rounding), else 0; empty when the protein was not predicted",
    "predicted": "the called locations, ';'-joined",
    "n_images_skipped": "images found for the protein that could not be read (reasons in warnings)",
    "sequence_use": "full, truncated (to the checkpoint's max_residues) or windows",
    "warnings": "per-protein notes: skipped or converted images, truncated sequences, images unlike the "
                "training images",
    "error": "why the protein was not predicted (then its probabilities are empty)",
    "threshold_<label>": "the checkpoint's threshold for the location (the same on every row)",
    "provenance": "only for demo checkpoints: why the numbers are not biologically meaningful",
}


class MissingImagesError(UserError, ValueError):
    """The fusion model needs at least one IHC image per protein."""


def fusion_needs_images(ids) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return (f"this checkpoint is an image+sequence fusion model: give IHC images for {shown} with --images "
            f"(DIR/<protein_id>/*.jpg or DIR/<protein_id>_*.jpg; also .jpeg/.png/.tif/.tiff)")


def _warn(msg: str) -> None:
    # sys.stderr looked up at call time, so redirected/captured stderr sees it
    print(f"warning: {msg}", file=sys.stderr)


def _col(label: str) -> str:
    return "_".join(str(label).split())


def _shown(items, n: int = 5) -> str:
    items = [str(x) for x in items]
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# -- checkpoint --------------------------------------------------------------------------------
def _normalise(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def compare_fingerprints(kind: str, stored: dict, current: dict) -> None:
    """Raise CheckpointMismatchError naming ``kind`` and the differing keys (dtype only warns)."""
    a, b = _normalise(stored), _normalise(current)
    diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    hard = [k for k in diff if k not in TOLERATED_KEYS]
    if hard:
        detail = "; ".join(f"{k}: trained {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in hard)
        raise CheckpointMismatchError(
            f"the {kind} encoder re-created from the checkpoint's 'encoders.{kind}' config differs from the "
            f"one the model was trained on (keys {hard}): {detail}")
    for k in diff:
        _warn(f"{kind} encoder {k} differs from training ({a.get(k)!r} -> {b.get(k)!r}); "
              f"predictions may differ slightly")


def image_grid(meta: dict) -> int:
    """Tiles per side the image store used (``crop_grid``, high-resolution mode); 1 = whole image."""
    grid = meta["image_encoder"].get("crop_grid", 1)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise CheckpointError(f"image_encoder.crop_grid must be a positive integer, got {grid!r}")
    if meta["encoders"].get("crop_grid", grid) != grid:
        raise CheckpointMismatchError(f"encoders.crop_grid {meta['encoders']['crop_grid']} differs from the "
                                      f"image store's crop_grid {grid}")
    return grid


def load_for_prediction(checkpoint: str | Path, device: str = "cpu", *, labels=None):
    """(model, meta, sequence encoder, image encoder), all checked against each other."""
    ckpt = Checkpoint.load(checkpoint, device=device, labels=labels)
    meta = ckpt.meta()
    enc = meta["encoders"]
    try:
        seq_enc = load_sequence_encoder(enc["sequence"], device=device)
        img_enc = load_image_encoder(enc["image"], device=device)
    except OfflineError as exc:
        if isinstance(exc, UserError):
            raise
        raise RunFailed(str(exc)) from None
    except ValueError as exc:  # a config the loaders refuse (allowed keys, bad values)
        raise CheckpointError(f"{Path(checkpoint) / 'config.json'}: bad 'encoders' config: {exc}") from None
    seq_fp = seq_enc.fingerprint()
    for k in STORE_SEQUENCE_KEYS:
        if k in meta["sequence_encoder"]:
            seq_fp[k] = enc[k]
    img_fp = img_enc.fingerprint()
    grid = image_grid(meta)
    if grid > 1:
        img_fp["crop_grid"] = grid
    compare_fingerprints("sequence", meta["sequence_encoder"], seq_fp)
    compare_fingerprints("image", meta["image_encoder"], img_fp)
    for kind, dim, size in (("sequence", "seq_dim", seq_enc.hidden_size), ("image", "img_dim", img_enc.hidden_size)):
        if meta["model"][dim] != size:
            raise CheckpointMismatchError(f"model {dim} is {meta['model'][dim]} but the {kind} encoder's "
                                          f"hidden size is {size}")
    return ckpt.model, meta, seq_enc, img_enc


def demo_note(meta: dict) -> str | None:
    """The demo-model warning, or None for pretrained encoders on real images."""
    prov = meta.get("provenance") or {}
    parts = []
    if prov.get("random_weight_encoders") or any(meta[k].get("random_weights") for k in
                                                  ("sequence_encoder", "image_encoder")):
        parts.append("random-weight encoders")
    if prov.get("synthetic_images"):
        parts.append("synthetic training images")
    if not parts:
        return None
    return (f"predictions come from a demo model ({' + '.join(parts)}) and are not biologically meaningful")


# -- inputs ------------------------------------------------------------------------------------
def unsafe_id(pid: str) -> str | None:
    """Why ``pid`` cannot be used as a file name under --images (None when it can)."""
    if pid in (".", "..") or any(c in pid for c in ("/", "\\", "\0")) or os.path.isabs(pid):
        return (f"protein id {pid!r} is not a plain file name (it holds a path separator or is '.' or '..'); "
                f"its images were not looked up, so nothing outside --images is read")
    return None


def _is_image(f: Path) -> bool:
    return f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS


def find_images(images_dir: str | Path, protein_ids) -> dict[str, list[Path]]:
    """{protein id: sorted image paths} following the module's images rule (unsafe ids: [])."""
    root = Path(images_dir)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise UserError(f"images folder {root} {what}")
    ids = [str(p) for p in protein_ids]
    found: dict[str, set[Path]] = {p: set() for p in ids}
    safe = [p for p in ids if unsafe_id(p) is None]
    sub = root
    try:
        for p in safe:
            sub = root / p
            if sub.is_dir():
                found[p].update(f for f in sub.iterdir() if _is_image(f))
        sub = root
        by_length = sorted(safe, key=len, reverse=True)  # longest id first: 'A_1_x.jpg' is A_1's
        for f in root.iterdir():
            if not _is_image(f):
                continue
            for p in by_length:
                if f.stem == p or f.stem.startswith(p + "_"):
                    found[p].add(f)
                    break
    except OSError as exc:
        raise UserError(f"cannot list images folder {sub}: {exc.strerror or exc}") from None
    return {p: sorted(v) for p, v in found.items()}


def unmatched_images(images_dir: str | Path, found: dict[str, list[Path]]) -> list[Path]:
    """Image files anywhere under ``images_dir`` that the rule gives to no protein."""
    root = Path(images_dir)
    used = {p for paths in found.values() for p in paths}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if _is_image(f) and f not in used:
                out.append(f.relative_to(root))
    return out


def read_sequences(fasta: str | Path) -> dict[str, str]:
    """read_fasta with every problem (missing, binary, malformed) as one line naming the file."""
    path = Path(fasta)
    if not path.is_file():
        raise UserError(f"FASTA file {path} {'is not a file' if path.exists() else 'not found'}")
    try:
        return read_fasta(path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text FASTA file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise UserError(f"cannot read FASTA file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # malformed records, duplicate ids, non-amino-acid characters
        msg = str(exc)
        raise UserError(msg if str(path) in msg else f"{path}: {msg}") from None


def check_out_path(out: str | Path, *, inputs=()) -> Path:
    """Refuse, before any work, an --out that could not be written (or would replace an input)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name, e.g. {out / 'predictions.csv'}")
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} exists and is not a regular file")
    parent = out.parent
    if not parent.exists():
        raise UserError(f"--out {out}: folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is not a folder")
    for inp in inputs:
        if inp is not None and Path(inp).exists() and out.resolve() == Path(inp).resolve():
            raise UserError(f"--out {out} is the input file {inp}; it would be overwritten")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"--out {out} exists and is read-only")
    try:  # the output is written as a temporary file in the same folder, then renamed into place
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write in folder {parent} ({exc.strerror or exc})") from None
    return out


def for_csv(df: pd.DataFrame) -> pd.DataFrame:
    """The table as written: probabilities rounded to ``PROB_DECIMALS``."""
    probs = [c for c in df.columns if c.startswith("prob_")]
    return df.assign(**{c: df[c].round(PROB_DECIMALS) for c in probs})


def write_csv(df: pd.DataFrame, out: str | Path) -> Path:
    """Whole or not at all: the previous file stays until the new one is complete. The
    description (``output_description``) goes to ``<out>.json`` beside it, also whole."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with full_disk_as_error(f"--out {out}"):
            for_csv(df).to_csv(tmp, index=False)
            publish(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if "checkpoint" in df.attrs:
        write_text(description_path(out), json.dumps(output_description(df), indent=2) + "\n")
    return out


def description_path(out: str | Path) -> Path:
    return Path(f"{out}.json")


def call_rule(meta: dict) -> str:
    """How a probability becomes a call, as the checkpoint's configuration was evaluated."""
    return "prob > threshold" if (meta.get("training") or {}).get("thresholds") == "fixed" else "prob >= threshold"


def output_description(df: pd.DataFrame) -> dict:
    """What ``<out>.json`` holds: labels, thresholds and rule, columns, the checkpoint's provenance."""
    ck = df.attrs["checkpoint"]
    return {"labels": ck["labels"], "thresholds": dict(zip(ck["labels"], ck["thresholds"])),
            "call_rule": ck["call_rule"], "probability_decimals": PROB_DECIMALS,
            "columns": OUTPUT_COLUMNS, "checkpoint": {k: v for k, v in ck.items() if k not in ("labels", "thresholds")},
            "unmatched_images": df.attrs.get("unmatched_images", [])}


# -- images unlike the training images ----------------------------------------------------------
def image_shift(stats: dict, training: dict) -> list[str]:
    """Why an image (``data.images.image_statistics``) looks unlike the checkpoint's training
    images (``training_images``): [] when it looks alike or nothing was recorded."""
    notes = []
    median = training.get("median_side_px")
    if median and not (median / SIDE_RATIO <= stats["side_px"] <= median * SIDE_RATIO):
        notes.append(f"{stats['side_px']} px on its long side, the training images' median is {median} px "
                     f"(more than {SIDE_RATIO:g}x apart)")
    lo, hi = training.get("mean_intensity_min"), training.get("mean_intensity_max")
    if lo is not None and hi is not None and not (lo - INTENSITY_MARGIN <= stats["mean_intensity"]
                                                  <= hi + INTENSITY_MARGIN):
        notes.append(f"mean intensity {stats['mean_intensity']:.0f}, the training images' range is "
                     f"{lo:.0f}-{hi:.0f} (more than {INTENSITY_MARGIN:g} grey levels outside)")
    return notes


def _shift_warnings(paths: list[Path], training: dict, pid: str, warns: list[str]) -> None:
    shifted = []
    for path in paths:
        try:
            notes = image_shift(image_statistics(path), training)
        except (BadImageError, OSError):   # an unreadable image is reported where it is decoded
            continue
        if notes:
            shifted.append(path.name)
            warns.append(f"{path.name} unlike the training images: {'; '.join(notes)}")
    if shifted:
        _warn(f"{pid}: {len(shifted)} of {len(paths)} image(s) unlike the checkpoint's training images "
              f"({_shown(shifted, 3)}; details in the warnings column): predictions may be unreliable")


# -- prediction --------------------------------------------------------------------------------
def _as_trained(t: torch.Tensor) -> torch.Tensor:
    # Training read features from the fp16 store; round the same way so that a protein gets
    # the probabilities the evaluation would have given it.
    return t.to(STORE_DTYPE).float()


def sequence_use(seq: str, max_residues: int, long_policy: str) -> tuple[str, str | None]:
    """('full' | 'truncated' | 'windows', the note for the row or None)."""
    if len(seq) <= max_residues:
        return "full", None
    if long_policy == "windows":
        return "windows", (f"sequence of {len(seq)} residues embedded in overlapping windows of {max_residues} "
                           f"(checkpoint max_residues, long_policy windows)")
    return "truncated", (f"sequence of {len(seq)} residues truncated to its first {max_residues} "
                         f"(checkpoint max_residues); residues {max_residues + 1}-{len(seq)} were not used")


def embed_protein_sequence(seq_enc, seq: str, max_residues: int, long_policy: str, *,
                           end_token: str = "drop") -> torch.Tensor:
    """Sequence features exactly as extract_sequences stored them (before fp16 storage) and as
    the model was trained on them: the residues, and with ``end_token="keep"`` the ``</s>`` row last."""
    keep = end_token == "keep"
    if len(seq) > max_residues and long_policy == "windows":
        return embed_sequence_long(seq_enc, seq, max_residues, end_token=keep)
    return seq_enc.embed_batch([seq[:max_residues]], end_token=keep)[0]


@torch.no_grad()
def protein_probabilities(model, seq_tokens: torch.Tensor, img_tokens: torch.Tensor, device: str,
                          batch_size: int = 32) -> np.ndarray:
    """Mean over images of sigmoid(model(image, sequence)); returns (n_labels,)."""
    model.eval()
    probs = []
    for start in range(0, img_tokens.shape[0], batch_size):
        img = img_tokens[start:start + batch_size].to(device)
        seq = seq_tokens.unsqueeze(0).expand(img.shape[0], -1, -1).to(device)
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=device)
        probs.append(torch.sigmoid(model(img, seq, mask)).float().cpu())
    return torch.cat(probs).double().mean(0).numpy()


def _image_tokens(img_enc, paths: list[Path], pid: str, batch_size: int, grid: int, warns: list[str], *,
                  draft: tuple[int, int] | None = None):
    """Tokens of every usable image, loaded batch by batch (never all images in memory at once).
    ``draft``: decode JPEGs at this draft size, as the training features were extracted."""
    chunks, used, skipped = [], 0, 0
    for start in range(0, len(paths), batch_size):
        pics = []
        for path in paths[start:start + batch_size]:
            try:
                with warnings.catch_warnings():  # load_image refuses these itself, with the file's name
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im = load_image(path, draft=draft)
            except BadImageError as exc:
                skipped += 1
                warns.append(f"skipped {exc}")
                _warn(f"{pid}: skipped {exc}")
                continue
            note = im.info.get(CONVERSION_NOTE)
            if note:
                warns.append(f"converted {path.name}: {note}")
                _warn(f"{pid}: converted {path}: {note}")
            pics.append(im)
        if pics:
            tiles = [t for im in pics for t in crop_grid(im, grid)]
            tok = img_enc.embed_batch(tiles)
            chunks.append(_as_trained(tok.reshape(len(pics), -1, tok.shape[-1])))
            used += len(pics)
    return (torch.cat(chunks) if chunks else None), used, skipped


def predict(checkpoint: str | Path, fasta: str | Path, images: str | Path | None = None, device: str = "auto",
            progress: bool = True, batch_size: int = 32, *, labels=_UNSET) -> pd.DataFrame:
    """Protein-level probabilities and calls for every FASTA record (see the module docstring).

    ``labels``: the label names and order the checkpoint must have (default: the project's
    five; None: whatever it lists). Raises MissingImagesError when ``images`` is None; a
    protein without a usable image gets a row with the reason in ``error`` instead.
    """
    labels = LABELS if labels is _UNSET else labels
    try:
        device = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    read_config(checkpoint, labels=labels)  # cheap checks before the encoders are loaded
    sequences = read_sequences(fasta)
    if images is None:
        raise MissingImagesError(fusion_needs_images(sequences))
    found = find_images(images, sequences)
    unmatched = unmatched_images(images, found)
    if unmatched:
        _warn(f"{len(unmatched)} image file(s) in {images} match no FASTA id and are not used: {_shown(unmatched)} "
              f"(images of protein P: DIR/P/*, DIR/P.<ext> or DIR/P_*.<ext>)")
    model, meta, seq_enc, img_enc = load_for_prediction(checkpoint, device, labels=labels)
    labels, enc = meta["labels"], meta["encoders"]
    thresholds = np.asarray(meta["thresholds"], dtype=np.float64)
    grid = image_grid(meta)
    end_token = trained_end_token(meta)   # the sequence rows the model was trained on
    note = demo_note(meta)
    if note:
        _warn(note)
    if meta.get("threshold_fallback"):
        fallback = ", ".join(f"{lab} {t:g}" for lab, t in zip(labels, thresholds) if lab in meta["threshold_fallback"])
        _warn(f"fallback thresholds, not tuned (no positive of the label in the validation split): {fallback}")
    training_images = meta.get("training_images") or {}
    if not training_images:
        print(f"note: {checkpoint} records no statistics of its training images (written before they were "
              "recorded): input images are not compared with them", file=sys.stderr)
    if not model.cfg.apply_mask:
        # the authors' configuration lets padding leak into the output; here each protein runs
        # unpadded, so numbers can differ from the padded batches of the evaluation
        _warn("this model ignores the padding mask (apply_mask: false); predictions are made without "
              "padding and may differ from the evaluation's padded batches")

    # decode as extraction did (JPEG draft size from the encoder's transform), so features match training
    draft = draft_size(img_enc, grid, enabled=bool(enc.get("jpeg_draft", False)))
    rows = []
    for pid, seq in progress_bar(sequences.items(), desc="proteins", unit="protein", disable=not progress):
        use, seq_note = sequence_use(seq, enc["max_residues"], enc["long_policy"])
        warns = [seq_note] if seq_note else []
        row = {"protein_id": pid, "n_images": 0, "n_images_skipped": 0, "sequence_use": use}
        bad_id = unsafe_id(pid)
        if bad_id:
            row["error"] = bad_id
            _warn(f"{pid}: {bad_id}")
        else:
            if seq_note:
                _warn(f"{pid}: {seq_note}")
            if training_images:
                _shift_warnings(found[pid], training_images, pid, warns)
            try:
                img_tokens, row["n_images"], row["n_images_skipped"] = _image_tokens(
                    img_enc, found[pid], pid, batch_size, grid, warns, draft=draft)
                if img_tokens is None:
                    why = (f"all {len(found[pid])} image(s) of {pid} are unusable" if found[pid]
                           else f"no images for {pid} in {images}")
                    row["error"] = f"{why}: {fusion_needs_images([pid])}"
                else:
                    seq_tokens = _as_trained(embed_protein_sequence(seq_enc, seq, enc["max_residues"],
                                                                    enc["long_policy"], end_token=end_token))
                    row["_prob"] = protein_probabilities(model, seq_tokens, img_tokens, device, batch_size)
            except torch.OutOfMemoryError:  # one huge protein must not cost the others their rows
                row.pop("_prob", None)
                row["error"] = f"out of memory on {device} for {pid}; try a smaller --batch-size"
                _warn(f"{pid}: {row['error']}")
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
        row["warnings"] = "; ".join(warns)
        rows.append(row)
    rule = call_rule(meta)
    out = _frame(rows, labels, thresholds, note, strict=rule == "prob > threshold")
    out.attrs["unmatched_images"] = [str(p) for p in unmatched]
    out.attrs["checkpoint"] = {"path": str(Path(checkpoint).resolve()), "run_id": meta.get("run_id", ""),
                               "config_hash": meta.get("config_hash", ""), "labels": list(labels),
                               "thresholds": [float(t) for t in thresholds], "call_rule": rule,
                               "threshold_fallback": list(meta.get("threshold_fallback") or []),
                               "provenance": meta.get("provenance") or {}, "demo_note": note,
                               "training_images": training_images or None}
    return out


def _frame(rows: list[dict], labels: list[str], thresholds: np.ndarray, note: str | None, *,
           strict: bool = False) -> pd.DataFrame:
    done = np.array(["_prob" in r for r in rows], dtype=bool)
    probs = np.full((len(rows), len(labels)), np.nan)
    calls = np.zeros((len(rows), len(labels)), dtype=np.int8)
    if done.any():
        probs[done] = np.stack([r["_prob"] for r in rows if "_prob" in r])
        calls[done] = binarize(probs[done], thresholds, strict=strict)
    out = pd.DataFrame({"protein_id": [r["protein_id"] for r in rows],
                        "n_images": [r["n_images"] for r in rows]})
    for j, lab in enumerate(labels):
        out[f"prob_{_col(lab)}"] = probs[:, j]
    for j, lab in enumerate(labels):
        # nullable ints: a protein that was not predicted has no call (empty in the CSV), not 0
        out[f"call_{_col(lab)}"] = pd.array(np.where(done, calls[:, j], 0), dtype="Int64")
        out.loc[~done, f"call_{_col(lab)}"] = pd.NA
    out["predicted"] = [";".join(lab for lab, c in zip(labels, calls[i]) if c) if done[i] else ""
                        for i in range(len(rows))]
    out["n_images_skipped"] = [r["n_images_skipped"] for r in rows]
    out["sequence_use"] = [r["sequence_use"] for r in rows]
    out["warnings"] = [r["warnings"] for r in rows]
    out["error"] = [r.get("error", "") for r in rows]
    for j, lab in enumerate(labels):
        out[f"threshold_{_col(lab)}"] = float(thresholds[j])
    if note:
        out["provenance"] = f"DEMO: {note}"
    return out


if __name__ == "__main__":  # the old entry `python -m proloc_lib.predict` (by name: cli sits above this module)
    import importlib

    importlib.import_module("proloc_lib.cli.legacy").forward("predict")
