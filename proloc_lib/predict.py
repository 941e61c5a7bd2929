"""Predict the five locations of new proteins with a trained fusion checkpoint.

    python -m proloc_lib.predict --checkpoint DIR --fasta FILE --images DIR [--out CSV]
                                 [--device auto] [--batch-size N]

The checkpoint (``training.save_checkpoint``: ``model.safetensors`` + ``config.json``) is
loaded without pickle. Both encoders are re-created from the checkpoint's ``encoders``
section and must reproduce the fingerprints stored at training time, so features are
computed by the very models (and preprocessing) the fusion model was trained on.

Images rule (``--images DIR``), for each FASTA id ``P``:

* every image file directly inside the folder ``DIR/P/``, and
* every file ``DIR/P.<ext>`` or ``DIR/P_<anything>.<ext>`` (a file that fits several ids
  goes to the longest one, so ``A_1_x.jpg`` belongs to ``A_1``, not ``A``),

where ``<ext>`` is jpg, jpeg, png, tif or tiff (any case); hidden files are ignored.

Each protein's sequence is embedded once (truncated to ``max_residues``, or in windows, as
the checkpoint says); the model runs once per image with the sequence repeated, and the
image probabilities are averaged per protein, as in the protein-level evaluation. Calls use
the checkpoint's per-label thresholds (``prob >= threshold``, as in ``metrics.binarize``).

Output: one row per FASTA record, in file order: ``protein_id, n_images, prob_<label>...,
call_<label>..., predicted`` (';'-joined label names), then ``warnings`` and ``error``
(a protein that could not be predicted has empty probabilities and the reason in ``error``)
and, for demo checkpoints, ``provenance``. Label names in column names have spaces replaced
by underscores (``prob_endoplasmic_reticulum``); ``predicted`` keeps the names as they are.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import resolve_device
from .embeddings import STORE_DTYPE, embed_sequence_long
from .images import BadImageError, load_image
from .metrics import binarize
from .sequences import read_fasta

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
REQUIRED_KEYS = ("model", "labels", "thresholds", "encoders", "sequence_encoder", "image_encoder")
ENCODER_KEYS = ("sequence", "image", "max_residues", "long_policy")
# Keys the feature store adds to the sequence fingerprint (extract_sequences): they come from
# the checkpoint's encoders section, not from the encoder object.
STORE_SEQUENCE_KEYS = ("max_residues", "long_policy")
# A pretrained ProtT5 runs in fp16 on GPU and fp32 on CPU; features were stored in fp16 either
# way, so a dtype-only difference is reported but does not block prediction on another device.
TOLERATED_KEYS = ("dtype",)


class CheckpointError(ValueError):
    """A checkpoint folder whose files or config.json are missing or malformed."""


class CheckpointMismatchError(CheckpointError):
    """Re-created encoders (or their sizes) differ from what the model was trained on."""


class MissingImagesError(ValueError):
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


# -- checkpoint --------------------------------------------------------------------------------
def read_checkpoint_config(ckpt_dir: str | Path) -> dict:
    """config.json of a checkpoint folder, checked for every key prediction relies on."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {ckpt_dir}")
    cfg_path, weights = ckpt_dir / "config.json", ckpt_dir / "model.safetensors"
    for f in (cfg_path, weights):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt_dir} lacks {f.name} (expected {f})")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{cfg_path} lacks required key(s) {missing}")
    enc = meta["encoders"]
    if not isinstance(enc, dict):
        raise CheckpointError(f"{cfg_path}: 'encoders' must be an object")
    missing = [k for k in ENCODER_KEYS if k not in enc]
    if missing:
        raise CheckpointError(f"{cfg_path} lacks required key(s) {['encoders.' + k for k in missing]}")
    if enc["long_policy"] not in ("truncate", "windows"):
        raise CheckpointError(f"{cfg_path}: encoders.long_policy must be 'truncate' or 'windows', "
                              f"got {enc['long_policy']!r}")
    if not isinstance(enc["max_residues"], int) or enc["max_residues"] < 1:
        raise CheckpointError(f"{cfg_path}: encoders.max_residues must be a positive integer, "
                              f"got {enc['max_residues']!r}")
    for key in ("model", "sequence_encoder", "image_encoder"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{cfg_path}: '{key}' must be an object")
    for key in ("seq_dim", "img_dim"):
        if key not in meta["model"]:
            raise CheckpointError(f"{cfg_path} lacks required key 'model.{key}'")
    n_labels = int(meta["model"].get("n_labels", 5))
    labels = meta["labels"]
    if not isinstance(labels, list) or len(labels) != n_labels or len(set(labels)) != len(labels):
        raise CheckpointMismatchError(f"{cfg_path}: 'labels' must list {n_labels} distinct names "
                                      f"(model n_labels), got {labels!r}")
    thr = meta["thresholds"]
    try:
        t = np.asarray(thr, dtype=np.float64)
    except (TypeError, ValueError):
        t = np.full(1, np.nan)
    if t.shape != (n_labels,) or np.isnan(t).any() or ((t < 0) | (t > 1)).any():
        raise CheckpointError(f"{cfg_path}: 'thresholds' must be {n_labels} numbers in [0, 1], got {thr!r}")
    # the dims the model was built for must be the hidden sizes of the features it was fed
    for kind, dim in (("sequence", "seq_dim"), ("image", "img_dim")):
        stored = meta[f"{kind}_encoder"].get("hidden_size")
        if stored is not None and stored != meta["model"][dim]:
            raise CheckpointMismatchError(
                f"{cfg_path}: model {dim} is {meta['model'][dim]} but the stored {kind} encoder "
                f"fingerprint has hidden size {stored}")
    return meta


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


def load_for_prediction(checkpoint: str | Path, device: str = "cpu"):
    """(model, meta, sequence encoder, image encoder), all checked against each other."""
    from .encoders import load_image_encoder, load_sequence_encoder
    from .model import FusionConfig
    from .training import load_checkpoint

    meta = read_checkpoint_config(checkpoint)
    enc = meta["encoders"]
    seq_enc = load_sequence_encoder(enc["sequence"], device=device)
    img_enc = load_image_encoder(enc["image"], device=device)
    seq_fp = seq_enc.fingerprint()
    for k in STORE_SEQUENCE_KEYS:
        if k in meta["sequence_encoder"]:
            seq_fp[k] = enc[k]
    compare_fingerprints("sequence", meta["sequence_encoder"], seq_fp)
    compare_fingerprints("image", meta["image_encoder"], img_enc.fingerprint())
    for kind, dim, size in (("sequence", "seq_dim", seq_enc.hidden_size), ("image", "img_dim", img_enc.hidden_size)):
        if meta["model"][dim] != size:
            raise CheckpointMismatchError(f"model {dim} is {meta['model'][dim]} but the {kind} encoder's "
                                          f"hidden size is {size}")
    try:
        FusionConfig(**meta["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(checkpoint) / 'config.json'}: bad 'model' config: {exc}") from None
    try:
        model, _ = load_checkpoint(checkpoint, device=device)
    except RuntimeError as exc:  # shape / key mismatch between config.json and the weights
        raise CheckpointError(f"{Path(checkpoint) / 'model.safetensors'} does not fit the model in "
                              f"config.json: {exc}") from None
    return model, meta, seq_enc, img_enc


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


# -- images ------------------------------------------------------------------------------------
def find_images(images_dir: str | Path, protein_ids) -> dict[str, list[Path]]:
    """{protein id: sorted image paths} following the module's images rule."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"images folder not found: {root}")
    ids = [str(p) for p in protein_ids]
    found: dict[str, set[Path]] = {p: set() for p in ids}

    def is_image(f: Path) -> bool:
        return f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS

    for p in ids:
        sub = root / p
        if sub.is_dir():
            found[p].update(f for f in sub.iterdir() if is_image(f))
    by_length = sorted(ids, key=len, reverse=True)  # longest id first: 'A_1_x.jpg' is A_1's
    for f in root.iterdir():
        if not is_image(f):
            continue
        for p in by_length:
            if f.stem == p or f.stem.startswith(p + "_"):
                found[p].add(f)
                break
    return {p: sorted(v) for p, v in found.items()}


# -- prediction --------------------------------------------------------------------------------
def _as_trained(t: torch.Tensor) -> torch.Tensor:
    # Training read features from the fp16 store; round the same way so that a protein gets
    # the probabilities the evaluation would have given it.
    return t.to(STORE_DTYPE).float()


def embed_protein_sequence(seq_enc, seq: str, max_residues: int, long_policy: str) -> torch.Tensor:
    """Per-residue features exactly as extract_sequences stored them (before fp16 storage)."""
    if len(seq) > max_residues and long_policy == "windows":
        return embed_sequence_long(seq_enc, seq, max_residues)
    return seq_enc.embed_batch([seq[:max_residues]])[0]


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


def predict(checkpoint: str | Path, fasta: str | Path, images: str | Path | None = None, device: str = "auto",
            progress: bool = True, batch_size: int = 32) -> pd.DataFrame:
    """Protein-level probabilities and calls for every FASTA record (see the module docstring).

    Raises MissingImagesError when ``images`` is None; a protein without a usable image gets
    a row with the reason in ``error`` instead.
    """
    device = resolve_device(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    meta = read_checkpoint_config(checkpoint)  # cheap checks before the encoders are loaded
    sequences = read_fasta(fasta)
    if images is None:
        raise MissingImagesError(fusion_needs_images(sequences))
    found = find_images(images, sequences)
    model, meta, seq_enc, img_enc = load_for_prediction(checkpoint, device)
    labels, enc = meta["labels"], meta["encoders"]
    thresholds = np.asarray(meta["thresholds"], dtype=np.float64)
    note = demo_note(meta)
    if note:
        _warn(note)
    if not model.cfg.apply_mask:
        # the authors' configuration lets padding leak into the output; here each protein runs
        # unpadded, so numbers can differ from the padded batches of the evaluation
        _warn("this model ignores the padding mask (apply_mask: false); predictions are made without "
              "padding and may differ from the evaluation's padded batches")

    rows = []
    for pid, seq in tqdm(sequences.items(), desc="proteins", unit="protein", disable=not progress):
        warns, pics = [], []
        for path in found[pid]:
            try:
                pics.append(load_image(path))
            except BadImageError as exc:
                warns.append(f"skipped {exc}")
                _warn(f"{pid}: skipped {exc}")
        row = {"protein_id": pid, "n_images": len(pics)}
        if not pics:
            why = (f"all {len(found[pid])} image(s) of {pid} are unreadable" if found[pid]
                   else f"no images for {pid} in {images}")
            row["error"] = f"{why}: {fusion_needs_images([pid])}"
        else:
            seq_tokens = _as_trained(embed_protein_sequence(seq_enc, seq, enc["max_residues"], enc["long_policy"]))
            img_tokens = torch.cat([_as_trained(img_enc.embed_batch(pics[i:i + batch_size]))
                                    for i in range(0, len(pics), batch_size)])
            row["_prob"] = protein_probabilities(model, seq_tokens, img_tokens, device, batch_size)
        row["warnings"] = "; ".join(warns)
        rows.append(row)
    return _frame(rows, labels, thresholds, note)


def _frame(rows: list[dict], labels: list[str], thresholds: np.ndarray, note: str | None) -> pd.DataFrame:
    done = np.array(["_prob" in r for r in rows], dtype=bool)
    probs = np.full((len(rows), len(labels)), np.nan)
    calls = np.zeros((len(rows), len(labels)), dtype=np.int8)
    if done.any():
        probs[done] = np.stack([r["_prob"] for r in rows if "_prob" in r])
        calls[done] = binarize(probs[done], thresholds)
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
    out["warnings"] = [r["warnings"] for r in rows]
    out["error"] = [r.get("error", "") for r in rows]
    if note:
        out["provenance"] = f"DEMO: {note}"
    return out


# -- command line ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proloc_lib.predict",
                                description="Predict protein subcellular locations with a ProLoc-IHS checkpoint.",
                                epilog="Images for protein P: DIR/P/*.{jpg,jpeg,png,tif,tiff}, DIR/P.<ext> "
                                       "or DIR/P_*.<ext>.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--fasta", required=True, help="protein sequences; the id is the header's first word")
    p.add_argument("--images", help="folder of IHC images (see the rule below)")
    p.add_argument("--out", help="output CSV (default: standard output)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    """CLI entry point: 0 when at least one protein was predicted, 1 when none, 2 on errors."""
    from .encoders import OfflineError

    args = _parser().parse_args(argv)
    try:
        device = resolve_device(args.device)  # unknown or unavailable device: fail before any work
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        df = predict(args.checkpoint, args.fasta, args.images, device=device,
                     progress=not args.no_progress, batch_size=args.batch_size)
    except MissingImagesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OfflineError, OSError, ValueError) as exc:  # one clear line for problems with the inputs
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    failed = df[df["error"] != ""]
    if len(failed):
        print(f"warning: {len(failed)} of {len(df)} protein(s) not predicted: "
              + ", ".join(failed["protein_id"].astype(str)), file=sys.stderr)
        for pid, err in zip(failed["protein_id"], failed["error"]):
            print(f"  {pid}: {err}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(f"wrote {len(df) - len(failed)} prediction(s) to {args.out}", file=sys.stderr)
    else:
        df.to_csv(sys.stdout, index=False)
    return 0 if len(failed) < len(df) else 1


if __name__ == "__main__":
    sys.exit(main())
