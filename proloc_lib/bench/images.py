"""Image extraction benchmark: ``proloc bench-images`` (one JSON object).

On the real HPA IHC sample image (``../shared/reference/hpa_ihc_sample.jpg``, 3200 x 3200 JPEG,
or ``--image``) repeated ``--n`` times, with the profile's image encoder:

- ``decode_images_per_s``: decode (JPEG draft as the profile says) + tiles + transform alone,
  through the same thread pool as extraction (``decode_workers`` threads, named in the JSON);
  with ``decode_images_per_s_1_thread`` and ``decode_full_images_per_s`` (no draft) beside it.
- ``decode_cpu_s_per_image``: CPU seconds per image of that pipeline, and
  ``decode_images_per_s_if_cores_free`` = workers / that: what the usable cores give when no other
  process competes for them (an estimate from CPU time, labelled so; the wall-clock rate above is
  the measurement).
- ``vit_forward_images_per_s``: the model alone on ready tensors (autocast on CUDA).
- ``images_per_s``: end to end, :func:`embeddings.extract_images` into a temporary store
  (decode, transform, forward, float16 shards written and checksummed).
- ``draft_feature_difference``: the largest change JPEG draft decoding makes to the stored
  features of the sample image (float16 tokens, draft against full decode, both in float32).
- ``autocast_feature_difference`` (CUDA only, else null): the same for the ViT under bfloat16
  (float16) autocast against float32, full decode (the published code runs it in float32).
- ``draft_pixel_difference``: the same in the encoder's input, before normalization: grey levels
  (0..255) after the encoder's resize (for the full profile the published one, 224 x 224
  bilinear), draft against full decode; for ``jpeg_draft: true`` (the smallest 1/2^k scale that
  covers the input) and for a 1/2-scale decode (``half_scale``, with its decode rate). Independent
  of the weights.

Encoders: ``demo``/``smoke`` use their random-weight small ViT; ``full`` uses its pretrained ViT
when the weights are cached or downloadable, else the same architecture with random weights
(``"weights"`` says which). Throughput does not depend on the weights' values; the feature
difference does, so with random weights it is only indicative. Timings depend on the machine
and its load: the JSON names the device, the CPU and the thread counts.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from proloc_lib.bench.common import _machine
from proloc_lib.core import paths, runtime
from proloc_lib.core.errors import RunFailed, UserError
from proloc_lib.data.images import load_image
from proloc_lib.features import encoders, store
from proloc_lib.features import image as image_features
from proloc_lib.features.encoders import load_image_encoder
from proloc_lib.profiles import loader as profiles

SAMPLE_IMAGE = "hpa_ihc_sample.jpg"
GOALS = {"decode_images_per_s_2_cpu_cores_3200px": 25.0, "images_per_s_16_core_gpu": 500.0}


def default_sample_image() -> Path:
    return paths.reference_dir() / SAMPLE_IMAGE


def machine(device: str) -> dict:
    return {**_machine(device), "cpus_usable": image_features.decode_workers("auto")}


def load_encoder(image_cfg: dict, device: str):
    """(encoder, weights note): pretrained when possible, else the same architecture, random weights."""
    if not image_cfg.get("pretrained"):
        return load_image_encoder(image_cfg, device=device), "random (the profile's random-weight encoder)"
    try:
        return load_image_encoder(image_cfg, device=device), "pretrained"
    except Exception as exc:           # offline, no cache: the real architecture still measures the speed
        # the profile's preprocessing kept (the published resize for full): timm's default would crop
        cfg = {k: v for k, v in image_cfg.items() if k in ("model", *encoders.PREPROCESSING_KEYS)}
        cfg.update(pretrained=False, init_seed=0)
        reason = " ".join(str(exc).split())[:200]
        return (load_image_encoder(cfg, device=device),
                f"random (the real architecture {image_cfg['model']} with random weights: "
                f"pretrained weights not available here: {reason})")


def _feature_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """How far features ``a`` are from the reference ``b`` (float16 tokens of one image)."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"max_abs": round(float((a - b).abs().max()), 5), "max_abs_feature": round(float(b.abs().max()), 5),
            "relative_to_max_abs_feature": round(float((a - b).abs().max() / b.abs().max()), 5),
            "mean_abs": round(float((a - b).abs().mean()), 6), "min_token_cosine": round(float(cos.min()), 6)}


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("inf")


def time_decode(path: Path, encoder, n: int, *, workers: int, grid: int, draft) -> tuple[float, float]:
    """(images per second of wall time, CPU seconds per image) through extraction's own
    decode + transform pipeline. CPU time barely depends on other load on a shared machine."""
    fn = lambda _: image_features.prepare_image(path, encoder, grid=grid, draft=draft)  # noqa: E731
    t0, c0 = time.perf_counter(), time.process_time()
    for _, fut in image_features.prefetch(range(n), fn, workers, ahead=2 * workers):
        fut.result()
    return _rate(n, time.perf_counter() - t0), round((time.process_time() - c0) / n, 4)


def run(*, profile: str = "demo", device: str = "auto", image: str | Path | None = None, n: int = 32,
        workers="auto", jpeg_draft: bool | None = None, batch_size: int | None = None) -> dict:
    cfg = profiles.load_profile(profile)
    ecfg = cfg["embeddings"]
    device = runtime.resolve_device(device)
    path = Path(image) if image else default_sample_image()
    if not path.is_file():
        raise UserError(f"sample image not found: {path} (pass --image PATH)")
    from PIL import Image

    with Image.open(path) as im:
        size, fmt = im.size, im.format
    grid = int(ecfg.get("crop_grid", 1))
    draft_on = ecfg.get("jpeg_draft", True) if jpeg_draft is None else jpeg_draft
    n_workers = image_features.decode_workers(
        ecfg.get("decode_workers", "auto") if workers in (None, "auto") else workers)
    batch_size = batch_size or int(ecfg.get("image_batch_size", 32))
    encoder, weights = load_encoder(ecfg["image"], device)
    draft = image_features.draft_size(encoder, grid, draft_on)
    amp = image_features.image_autocast_dtype(device, ecfg.get("image_autocast", True))

    image_features.prepare_image(path, encoder, grid=grid, draft=draft)       # warm caches (file, allocator)
    decode, decode_cpu = time_decode(path, encoder, n, workers=n_workers, grid=grid, draft=draft)
    decode_1, _ = time_decode(path, encoder, max(4, n // 4), workers=1, grid=grid, draft=draft)
    decode_full, full_cpu = time_decode(path, encoder, max(4, n // 4), workers=n_workers, grid=grid, draft=None)

    half = (size[0] // 2, size[1] // 2)
    covering = image_features.draft_size(encoder, grid, True)
    pixel_diff = {"jpeg_draft": image_features.decode_difference(path, encoder, grid=grid, draft=covering)
                  if covering else None,
                  "half_scale": {**image_features.decode_difference(path, encoder, grid=grid, draft=half),
                                 "decode_images_per_s": time_decode(path, encoder, max(4, n // 4), workers=n_workers,
                                                                    grid=grid, draft=half)[0]}}

    x = image_features.prepare_image(path, encoder, grid=grid, draft=draft)
    batch = x.repeat(max(1, batch_size // x.shape[0]), 1, 1, 1)[:max(batch_size, x.shape[0])]
    image_features._forward_tokens(encoder, batch[:2], amp)                    # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    reps = max(1, n // batch.shape[0])
    t0 = time.perf_counter()
    for _ in range(reps):
        image_features._forward_tokens(encoder, batch, amp)                    # includes the copy back to the CPU
    forward = _rate(reps * batch.shape[0] // (grid * grid), time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        items = {f"rep{i:05d}": path for i in range(n)}
        t0 = time.perf_counter()
        rep = image_features.extract_images(items, encoder, Path(tmp) / "store", batch_size=batch_size,
                               shard_size=int(ecfg.get("shard_size", 256)), progress=False, grid=grid,
                               jpeg_draft=draft_on, workers=n_workers, autocast=ecfg.get("image_autocast", True))
        end_to_end = _rate(n, time.perf_counter() - t0)
        if rep["embedded"] != n:
            raise RunFailed(f"bench-images: only {rep['embedded']} of {n} images embedded: {rep['failures'][:1]}")
        one = {"k": path}
        stores = {}
        for name, use_draft, use_amp in (("draft", True, False), ("full", False, False), ("full_amp", False, True)):
            if use_amp and not device.startswith("cuda"):
                continue                                   # autocast runs on CUDA only
            image_features.extract_images(one, encoder, Path(tmp) / name, progress=False, grid=grid,
                                          jpeg_draft=use_draft, workers=1, autocast=use_amp)
            stores[name] = store.EmbeddingStore(Path(tmp) / name).get("k").float()
        diff = {**_feature_difference(stores["draft"], stores["full"]),
                "draft_decode_size": list(load_image(path, draft=covering).size) if covering else None}
        amp_diff = (_feature_difference(stores["full_amp"], stores["full"]) if "full_amp" in stores else None)

    return {
        "benchmark": "bench-images",
        "profile": profile,
        "image": str(path), "image_size": list(size), "image_format": fmt, "n_images": n,
        "encoder": encoder.model_id, "weights": weights,
        "random_weights": weights.startswith("random"),
        "tokens_x_hidden": [encoder.n_tokens * grid * grid, encoder.hidden_size],
        "crop_grid": grid, "batch_size": batch_size,
        "jpeg_draft": list(draft) if draft else None,
        "autocast": str(amp).replace("torch.", "") if amp else None,
        "decode_parallelism": {"kind": "thread pool", "workers": n_workers},
        "images_per_s": end_to_end,
        "decode_images_per_s": decode,
        "decode_images_per_s_1_thread": decode_1,
        "decode_full_images_per_s": decode_full,
        "decode_cpu_s_per_image": decode_cpu,
        "decode_full_cpu_s_per_image": full_cpu,
        "decode_images_per_s_if_cores_free": round(n_workers / decode_cpu, 2) if decode_cpu else None,
        "vit_forward_images_per_s": forward,
        "draft_feature_difference": diff,
        "autocast_feature_difference": amp_diff,
        "draft_pixel_difference": pixel_diff,
        "goals": GOALS,
        "machine": machine(device),
        "note": ("Throughput of one real HPA image repeated; timings depend on the machine and its load. "
                 + ("Random-weight encoder: speeds are the architecture's, feature differences only indicative."
                    if weights.startswith("random") else "")),
    }
