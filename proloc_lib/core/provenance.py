"""Provenance: the line every table, figure and prediction carries about what is real and what is not."""

from __future__ import annotations


def provenance_note(cfg_or_provenance: dict) -> str:
    """What is real and what is not, from a profile or a stage's recorded provenance: the demo's
    synthetic images and random-weight encoders, or a mirror build's stand-in images and sequences."""
    prov = cfg_or_provenance.get("provenance", cfg_or_provenance)
    mirror = provenance_line(prov)
    if mirror:
        return mirror
    parts = []
    if prov.get("synthetic_images"):
        parts.append("SYNTHETIC IHC-like images")
    if prov.get("random_weight_encoders"):
        parts.append("RANDOM-WEIGHT encoders (not ProtT5/ViT weights)")
    if not parts:
        return "Real data and pretrained encoders."
    seq = "real UniProt sequences (SCL2205)" if prov.get("real_sequences") else "sequences"
    return "Demo numbers: " + " + ".join(parts) + f", {seq}. Not comparable with the paper."


def provenance_line(provenance: dict) -> str:
    """The note of a build from the offline mirror (synthetic images, stand-in sequences); '' otherwise."""
    parts = []
    if provenance.get("synthetic_images") and provenance.get("mirror"):
        parts.append("SYNTHETIC stand-in images from the offline mirror")
    if provenance.get("standin_sequences"):
        parts.append(f"{provenance['standin_sequences']} seeded STAND-IN sequences (not UniProt)")
    if not parts:
        return ""
    encoders = "RANDOM-WEIGHT encoders" if provenance.get("random_weight_encoders") else "pretrained encoders"
    return f"Mirror build: {'; '.join(parts)}; {encoders}. Not comparable with the paper."
