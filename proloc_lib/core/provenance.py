"""Provenance: the line every table, figure and prediction carries about what is real and what is not."""

from __future__ import annotations


def provenance_note(cfg_or_provenance: dict) -> str:
    """What is real and what is not, from a profile or a stage's recorded provenance (a mirror
    build with synthetic images or stand-in sequences says so too)."""
    prov = cfg_or_provenance.get("provenance", cfg_or_provenance)
    return " ".join(filter(None, [_encoders_and_images(prov), provenance_line(prov)]))


def _encoders_and_images(prov: dict) -> str:
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
    """Extra words for the provenance note when a build used mirror data ('' otherwise)."""
    parts = []
    if provenance.get("synthetic_images") and provenance.get("mirror"):
        parts.append("SYNTHETIC stand-in images from the offline mirror")
    if provenance.get("standin_sequences"):
        parts.append(f"{provenance['standin_sequences']} seeded STAND-IN sequences (not UniProt)")
    return ("Mirror build: " + "; ".join(parts) + ". Not comparable with the paper.") if parts else ""
