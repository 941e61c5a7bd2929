"""Notebook 02's driver: embed a profile's unique sequences and images into the feature stores."""

from __future__ import annotations

from pathlib import Path

from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
from proloc_lib.features.image import extract_images
from proloc_lib.features.sequence import extract_sequences
from proloc_lib.features.variants import image_store_dir, image_variants


def embed_sequence_stage(cfg: dict, proteins, out_dir: str | Path, device: str, shard: str | None = None,
                         on_stale: str = "recompute", progress: bool = True, *, verify: str = "full") -> dict:
    ecfg = cfg["embeddings"]
    encoder = load_sequence_encoder(ecfg["sequence"], device=device)
    unique = dict(zip(proteins["seq_hash"], proteins["sequence"]))
    return extract_sequences(unique, encoder, Path(out_dir) / "sequences", token_budget=ecfg["token_budget"],
                             max_residues=ecfg["max_residues"], long_policy=ecfg["long_policy"],
                             shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress,
                             verify=verify)


def image_embedder(cfg: dict, out_dir: str | Path, device: str, shard: str | None = None,
                   on_stale: str = "recompute", progress: bool = True, *, variants: bool = True):
    """``embed({image checksum: path}) -> report`` into the stage's image store and, with
    ``variants``, each ``embeddings.image_variants`` store (also used by the data stage's
    streaming mode, which embeds images as they arrive). The report is the main store's, with
    ``report["variants"][name]`` for each variant. Each store is verified in full on the first
    call, quickly (changed shards only) after that."""
    sections = image_variants(cfg) if variants else {None: cfg["embeddings"]}
    encoders: dict = {}
    calls = {"n": 0}

    def embed(paths: dict) -> dict:
        reports = {}
        for name, ecfg in sections.items():
            if name not in encoders:
                encoders[name] = load_image_encoder(ecfg["image"], device=device)
            reports[name] = extract_images(
                paths, encoders[name], image_store_dir(out_dir, name), batch_size=ecfg["image_batch_size"],
                shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress,
                grid=ecfg.get("crop_grid", 1), jpeg_draft=ecfg.get("jpeg_draft", True),
                workers=ecfg.get("decode_workers", "auto"), autocast=ecfg.get("image_autocast", True),
                verify="full" if calls["n"] == 0 else "quick")
        calls["n"] += 1
        report = reports.pop(None)
        if reports:
            report["variants"] = reports
        return report
    return embed


def embed_image_stage(cfg: dict, images, profile_dir: str | Path, out_dir: str | Path, device: str,
                      shard: str | None = None, on_stale: str = "recompute", progress: bool = True, *,
                      variants: bool = True) -> dict:
    paths = {row.image_id: Path(profile_dir) / row.path for row in images.itertuples()}
    return image_embedder(cfg, out_dir, device, shard, on_stale, progress, variants=variants)(paths)
