"""The run registry: every model row of the study has a parseable id ``<kind>.<name>``.

Ids are what tables, figures, tests and checkpoints select by (never display strings):
``fusion.corrected``, ``fusion.authors``, ``fusion.corrected_mil``, ``ablation.mask_off``,
``ablation.reference``, ``baseline.composition_lr``, ``cv.corrected``, ``control.permuted_labels``,
``resplit.stratified`` (the corrected model retrained on fresh splits of one protocol).
Display names are derived here, in one place.
"""

from __future__ import annotations

import re

KINDS = ("fusion", "ablation", "baseline", "cv", "control", "resplit")
_ID = re.compile(r"^(?P<kind>[a-z]+)\.(?P<name>[a-z0-9_]+)$")
FUSION_CORRECTED = "fusion.corrected"
FUSION_AUTHORS = "fusion.authors"
FUSION_CORRECTED_MIL = "fusion.corrected_mil"
ABLATION_REFERENCE = "ablation.reference"
CONTROL_PERMUTED = "control.permuted_labels"

# Display names that are not derivable from the id's words alone.
_DISPLAY = {
    "fusion.corrected": "fusion (corrected)",
    "fusion.authors": "fusion (authors' setting)",
    "fusion.corrected_mil": "fusion (corrected) + attention MIL",
    "baseline.label_frequency": "label frequency",
    "baseline.composition_lr": "composition + LR",
    "baseline.sequence_mlp": "sequence-only (pooled ProtT5 + MLP)",
    "baseline.light_attention": "sequence-only (light attention)",
    "baseline.image_mlp": "image-only (pooled ViT + MLP)",
    "baseline.late_fusion": "late fusion (sequence + image)",
    "baseline.early_fusion": "early fusion (pooled features + MLP)",
    "control.permuted_labels": "control: permuted labels",
}


def slug(text: str) -> str:
    """'mask off' -> 'mask_off', '1 image per protein' -> '1_image_per_protein'."""
    s = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    if not s:
        raise ValueError(f"cannot make a run id from {text!r}")
    return s


def make_id(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind '{kind}' (kinds: {KINDS})")
    return f"{kind}.{slug(name)}"


def parse(run_id: str) -> tuple[str, str]:
    """'ablation.mask_off' -> ('ablation', 'mask_off'); a malformed id is a ValueError."""
    m = _ID.match(str(run_id))
    if not m or m["kind"] not in KINDS:
        raise ValueError(f"not a run id: {run_id!r} (expected <kind>.<name>, kind one of {KINDS})")
    return m["kind"], m["name"]


def kind(run_id: str) -> str:
    return parse(run_id)[0]


def display_name(run_id: str) -> str:
    """The human label shown in tables and figures, derived from the id."""
    if run_id in _DISPLAY:
        return _DISPLAY[run_id]
    k, name = parse(run_id)
    words = name.replace("_", " ")
    if k == "ablation":
        return f"ablation: {words}"
    if k == "cv":
        return f"fusion ({words}), cross-validation"
    if k == "resplit":
        return f"fusion (corrected), {words} re-splits"
    return f"{k}: {words}"


def display_names(run_ids) -> list[str]:
    """``display_name`` for each id (a column of a table)."""
    return [display_name(r) for r in run_ids]
