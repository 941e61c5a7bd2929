"""Explicit, versioned mapping from annotated locations to the study's five labels.

A mapping file (YAML, under ``data/mappings/``) lists its target labels and, for every
source location it knows, the labels it maps to (an empty list means "known, but outside
the five": counted and dropped, never guessed). A location the file does not list is an
error that names it, so a new annotation vocabulary can never be silently mislabelled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

LABELS = ["cytoplasm", "endoplasmic reticulum", "mitochondria", "nucleus", "plasma membrane"]


class UnknownLocationError(ValueError):
    """A location string that the mapping file does not list."""


def _norm(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


@dataclass
class LabelMap:
    name: str
    version: str
    labels: list[str]
    mapping: dict[str, list[str]]
    separator: str = ";"
    source: str = ""
    counts: Counter = field(default_factory=Counter, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        path = Path(path)
        spec = yaml.safe_load(path.read_text())
        for key in ("name", "version", "labels", "map"):
            if key not in spec:
                raise ValueError(f"label mapping {path}: missing key '{key}'")
        labels = list(spec["labels"])
        mapping = {}
        for loc, targets in spec["map"].items():
            targets = list(targets or [])
            bad = [t for t in targets if t not in labels]
            if bad:
                raise ValueError(f"label mapping {path}: '{loc}' maps to {bad}, not in labels {labels}")
            mapping[_norm(loc)] = targets
        return cls(spec["name"], str(spec["version"]), labels, mapping,
                   spec.get("separator", ";"), str(path))

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def split(self, locations: str) -> list[str]:
        if locations is None or (isinstance(locations, float) and np.isnan(locations)):
            return []
        return [p for p in (_norm(x) for x in str(locations).split(self.separator)) if p]

    def vector(self, locations: str, where: str = "") -> np.ndarray:
        """0/1 vector over ``self.labels`` for one ';'-separated location string."""
        vec = np.zeros(len(self.labels), dtype=np.int8)
        for loc in self.split(locations):
            if loc not in self.mapping:
                known = ", ".join(sorted(self.mapping))
                raise UnknownLocationError(
                    f"unknown location '{loc}'{' at ' + where if where else ''} "
                    f"(mapping {self.id} in {self.source} knows: {known})")
            self.counts[loc] += 1
            for t in self.mapping[loc]:
                vec[self.labels.index(t)] = 1
        return vec

    def matrix(self, locations: pd.Series, where: str = "row") -> np.ndarray:
        """Label matrix (n, n_labels) for a column of location strings; errors name the row."""
        return np.stack([self.vector(s, f"{where} {idx}") for idx, s in locations.items()]) \
            if len(locations) else np.zeros((0, len(self.labels)), dtype=np.int8)

    def check_known(self, locations: pd.Series, where: str = "row") -> None:
        """Raise one error naming every unknown location of a column (count, first rows), or pass.

        Run before slow work, so a new annotation vocabulary is seen all at once, not one
        location per rerun.
        """
        unknown: dict[str, list] = {}
        for idx, s in locations.items():
            for loc in self.split(s):
                if loc not in self.mapping:
                    unknown.setdefault(loc, []).append(idx)
        if unknown:
            listed = "; ".join(f"'{loc}' x{len(rows)} ({where + ' ' if where else ''}{', '.join(map(str, rows[:3]))}"
                               + (", ..." if len(rows) > 3 else "") + ")"
                               for loc, rows in sorted(unknown.items(), key=lambda kv: -len(kv[1])))
            raise UnknownLocationError(f"{len(unknown)} location(s) unknown to mapping {self.id} "
                                       f"({self.source}): {listed}. Add each to the mapping file "
                                       "(mapped to [] if outside the labels) and bump its version.")

    def unmapped(self, locations: str) -> list[str]:
        """Known locations of this string that map to none of the labels."""
        return [loc for loc in self.split(locations) if loc in self.mapping and not self.mapping[loc]]


def add_label_columns(df: pd.DataFrame, locations_col: str, label_map: LabelMap,
                      where: str = "row") -> pd.DataFrame:
    """Return ``df`` with one 0/1 column per label, computed from ``locations_col``."""
    if locations_col not in df.columns:
        raise KeyError(f"missing column '{locations_col}' (have: {list(df.columns)})")
    out = df.copy()
    mat = label_map.matrix(out[locations_col], where=where)
    for j, lab in enumerate(label_map.labels):
        out[lab] = mat[:, j] if len(out) else np.zeros(0, dtype=np.int8)
    return out
