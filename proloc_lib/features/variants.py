"""Extra image stores of a profile (``embeddings.image_variants``): their settings and folders."""

from __future__ import annotations

import re
from pathlib import Path

from proloc_lib.core.errors import UserError

# -- the stage, as notebook 02 and the command line run it ---------------------------------------
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def image_variants(cfg: dict) -> dict[str | None, dict]:
    """``{None: embeddings section, name: section with the variant's overrides merged in}``.

    Variants come from ``embeddings.image_variants: {name: overrides}``; each has its own store
    (:func:`image_store_dir`)."""
    ecfg = cfg["embeddings"]
    out = {None: ecfg}
    base = {k: v for k, v in ecfg.items() if k != "image_variants"}
    for name, over in (ecfg.get("image_variants") or {}).items():
        if not VARIANT_NAME.match(str(name)):
            raise UserError(f"embeddings.image_variants: name '{name}' must be letters, digits, '_', '.', '-'")
        if not isinstance(over, dict):
            raise UserError(f"embeddings.image_variants.{name}: expected a mapping of overrides, got {over!r}")
        out[str(name)] = _deep_merge(base, over)
    return out


def image_store_dir(out_dir: str | Path, variant: str | None = None) -> Path:
    """``02_embeddings/images`` (the profile's encoder) or ``02_embeddings/images-<variant>``."""
    return Path(out_dir) / ("images" if variant is None else f"images-{variant}")
