"""The checkpoint: one typed object, written by training and read by ``predict``.

On disk: ``model.safetensors`` (weights, no pickle) + ``config.json`` (everything else).
``Checkpoint.load`` validates the JSON before any weights are read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from .model import FusionConfig, FusionModel

WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass(kw_only=True)
class Checkpoint:
    model: FusionModel
    run_id: str
    labels: list[str]
    label_map: str
    thresholds: list[float]
    training: dict
    config_hash: str
    encoders: dict                      # sequence/image encoder configs, max_residues, long_policy
    sequence_encoder: dict              # the sequence store's fingerprint
    image_encoder: dict                 # the image store's fingerprint
    provenance: dict = field(default_factory=dict)

    def meta(self) -> dict:
        """config.json's content."""
        return {"model": self.model.cfg.to_dict(), "run_id": self.run_id, "labels": list(self.labels),
                "label_map": self.label_map, "thresholds": [float(t) for t in self.thresholds],
                "training": self.training, "config_hash": self.config_hash, "encoders": self.encoders,
                "sequence_encoder": self.sequence_encoder, "image_encoder": self.image_encoder,
                "provenance": self.provenance}

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(out_dir / WEIGHTS))
        (out_dir / CONFIG).write_text(json.dumps(self.meta(), indent=2, default=str))
        return out_dir

    @classmethod
    def load(cls, ckpt_dir: str | Path, *, device: str = "cpu", labels: list[str] | None = None) -> "Checkpoint":
        """Read and validate; ``labels``: the label names and order the caller expects."""
        from .predict import read_checkpoint_config  # validation lives with its messages

        ckpt_dir = Path(ckpt_dir)
        meta = read_checkpoint_config(ckpt_dir)
        if labels is not None and list(meta["labels"]) != list(labels):
            raise ValueError(f"{ckpt_dir / CONFIG}: labels {meta['labels']} differ from the expected {list(labels)}")
        model = FusionModel(FusionConfig(**meta["model"]))
        model.load_state_dict(load_file(str(ckpt_dir / WEIGHTS), device=device))
        model.to(device).eval()
        return cls(model=model, run_id=meta.get("run_id", ""), labels=meta["labels"],
                   label_map=meta.get("label_map", ""), thresholds=list(meta["thresholds"]),
                   training=meta.get("training", {}), config_hash=meta.get("config_hash", ""),
                   encoders=meta["encoders"], sequence_encoder=meta["sequence_encoder"],
                   image_encoder=meta["image_encoder"], provenance=meta.get("provenance", {}))
