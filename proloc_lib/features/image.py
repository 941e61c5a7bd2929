"""Image features: decoding (JPEG draft, tiles), the encoder's transform, and extraction into a store."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from proloc_lib.data.images import BadImageError, load_image
from proloc_lib.features.store import (
    EmbeddingStore,
    _repair_report,
    parse_shard,
    select_shard,
)


# -- image extraction --------------------------------------------------------------------------
def crop_grid(image, grid: int) -> list:
    """Split an image into grid x grid tiles (row-major), each later resized by the ViT transform.

    Downscaling a ~3000-pixel IHC image to 224 pixels loses the subcellular detail the task needs;
    a bag of tiles keeps it (high-resolution mode)."""
    if grid <= 1:
        return [image]
    w, h = image.size
    return [image.crop((c * w // grid, r * h // grid, (c + 1) * w // grid, (r + 1) * h // grid))
            for r in range(grid) for c in range(grid)]


def decode_workers(setting="auto") -> int:
    """Threads for decoding: 'auto' = the CPUs this process may use (affinity, e.g. a container's
    share), else the given number. Pillow and torch release the GIL while decoding/resizing."""
    if setting in (None, "auto"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:               # macOS, Windows
            return max(1, os.cpu_count() or 1)
    n = int(setting)
    if n < 1:
        raise ValueError(f"decode_workers must be 'auto' or >= 1, got {setting}")
    return n


def transform_input_size(transform, data_config: dict | None = None) -> tuple[int, int] | None:
    """(width, height) the transform resizes to first: the smallest decode that loses nothing.

    Read from the first Resize of a torchvision Compose (an int = shorter side, so both sides must
    reach it); else from the data config (input size / crop_pct); None when unknown."""
    for t in getattr(transform, "transforms", None) or []:
        size = getattr(t, "size", None)
        if type(t).__name__.startswith("Resize") and size is not None:
            if isinstance(size, int):
                return size, size
            if len(size) == 1:
                return int(size[0]), int(size[0])
            return int(size[1]), int(size[0])
    if data_config and "input_size" in data_config:
        _, h, w = data_config["input_size"]
        pct = float(data_config.get("crop_pct") or 1.0)
        return int(w / pct + 0.999), int(h / pct + 0.999)
    return None


def draft_size(encoder, grid: int = 1, enabled: bool = True) -> tuple[int, int] | None:
    """JPEG draft target for this encoder: each of the grid x grid tiles must still reach the
    transform's input size. None (full decode) when disabled or the transform is unknown."""
    if not enabled:
        return None
    size = transform_input_size(getattr(encoder, "transform", None), getattr(encoder, "data_config", None))
    if size is None:
        return None
    g = max(1, int(grid))
    return size[0] * g, size[1] * g


def prepare_image(path, encoder, *, grid: int = 1, draft: tuple[int, int] | None = None):
    """Decode (JPEG draft to ``draft``), tile, transform: a (grid^2, C, H, W) tensor when the encoder
    has a ``transform`` (real ImageEncoder), else the list of PIL tiles for ``encoder.embed_batch``.
    The one preprocessing path of extraction (and the one ``predict`` should use to match it)."""
    tiles = crop_grid(load_image(path, draft=draft), grid)
    transform = getattr(encoder, "transform", None)
    if transform is None or not hasattr(encoder, "model"):
        return tiles
    tiles = [t if t.mode == "RGB" else t.convert("RGB") for t in tiles]
    split = _split_transform(transform)
    if split is None:
        return torch.stack([transform(t) for t in tiles])
    pil_steps, mean, std = split
    out = []
    for t in tiles:
        for step in pil_steps:
            t = step(t)
        out.append(_to_normalized_tensor(t, mean, std))
    return torch.stack(out)


def encoder_input_pixels(path, encoder, *, grid: int = 1, draft: tuple[int, int] | None = None) -> list:
    """The 8-bit RGB arrays (H, W, 3) the encoder's transform normalizes: decoded (JPEG draft to
    ``draft``), tiled and resized by its own PIL steps (the published resize for the full
    profile: 224 x 224 bilinear, the whole image). An encoder without a splittable transform gets
    a bilinear resize to its input size. What two decodings of one image are compared on."""
    import numpy as np
    from PIL import Image

    tiles = crop_grid(load_image(path, draft=draft), grid)
    split = _split_transform(getattr(encoder, "transform", None))
    if split is not None:
        steps = split[0]
    else:
        size = transform_input_size(getattr(encoder, "transform", None), getattr(encoder, "data_config", None))
        if size is None:
            raise ValueError("the encoder's input size is unknown: cannot compare decodings")
        steps = [lambda im: im.resize(size, Image.BILINEAR)]
    out = []
    for t in tiles:
        t = t if t.mode == "RGB" else t.convert("RGB")
        for step in steps:
            t = step(t)
        out.append(np.asarray(t, dtype=np.uint8))
    return out


def decode_difference(path, encoder, *, grid: int = 1, draft: tuple[int, int]) -> dict:
    """How far a JPEG draft decoding moves the encoder's input from a full decoding, in grey levels
    (0..255) per channel after the encoder's resize: max, mean and the share of values off by more
    than 1; with the draft decode's size."""
    import numpy as np

    full = np.stack(encoder_input_pixels(path, encoder, grid=grid)).astype(np.int16)
    fast = np.stack(encoder_input_pixels(path, encoder, grid=grid, draft=draft)).astype(np.int16)
    d = np.abs(full - fast)
    return {"draft_decode_size": list(load_image(path, draft=draft).size), "max_grey_levels": int(d.max()),
            "mean_grey_levels": round(float(d.mean()), 4), "share_over_1": round(float((d > 1).mean()), 6)}


def _split_transform(transform):
    """(PIL steps, mean, std) of a ``Compose([PIL steps..., ToTensor, Normalize])``, else None.

    The tensor part is then done in numpy (float32, the same operations in the same order, so
    the same numbers): torch's intra-op thread pool, entered from several decode threads, costs
    ~50 ms per small image on a loaded 2-core machine where numpy takes ~1 ms."""
    steps = list(getattr(transform, "transforms", None) or [])
    names = [type(s).__name__ for s in steps]
    if len(steps) < 2 or names[-2] not in ("ToTensor", "MaybeToTensor") or names[-1] != "Normalize":
        return None
    if any(n.endswith("ToTensor") or n == "Normalize" for n in names[:-2]):
        return None
    norm = steps[-1]
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).reshape(-1).numpy()
    std = torch.as_tensor(norm.std, dtype=torch.float32).reshape(-1).numpy()
    return steps[:-2], mean, std


def _to_normalized_tensor(image, mean, std) -> torch.Tensor:
    """ToTensor + Normalize of an RGB PIL image: (x / 255 - mean) / std, float32, (C, H, W)."""
    import numpy as np

    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def prefetch(items, fn, workers: int, ahead: int):
    """Yield ``(item, future of fn(item))`` in order, with up to ``ahead`` running in a thread pool."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = deque()
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= ahead:
                break
        while pending:
            item, fut = pending.popleft()
            for nxt in it:
                pending.append((nxt, pool.submit(fn, nxt)))
                break
            yield item, fut


def image_autocast_dtype(device: str, enabled: bool = True):
    """bfloat16 on CUDA where supported, else float16; None (float32) on CPU or when disabled."""
    if not enabled or not str(device).startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.inference_mode()
def _forward_tokens(encoder, x: torch.Tensor, amp_dtype) -> torch.Tensor:
    """All ViT tokens of a (B, C, H, W) batch, float32 on the CPU (autocast on CUDA)."""
    dev = torch.device(encoder.device)
    if dev.type == "cuda":
        x = x.pin_memory().to(dev, non_blocking=True)
    x = x.to(device=dev, dtype=encoder.dtype)
    if amp_dtype is not None:
        with torch.autocast(device_type=dev.type, dtype=amp_dtype):
            out = encoder.model.forward_features(x)
    else:
        out = encoder.model.forward_features(x)
    return out.float().cpu()


def image_fingerprint(encoder, *, grid: int = 1, draft: tuple[int, int] | None = None,
                      amp_dtype=None) -> tuple[dict, dict]:
    """(fingerprint, extraction settings): what makes an image store's features what they are
    (a store of other ones is stale). The extraction settings are kept apart (see
    ``EmbeddingStore.open``)."""
    fp = dict(encoder.fingerprint())
    if grid > 1:
        fp["crop_grid"] = grid
    extraction = {}
    if draft is not None:
        extraction["jpeg_draft"] = list(draft)
    if amp_dtype is not None:
        extraction["autocast"] = str(amp_dtype).replace("torch.", "")
    return fp, extraction


def extract_images(images: dict[str, str | Path], encoder, store_dir: str | Path, batch_size: int = 32,
                   shard_size: int = 256, shard: str | None = None, on_stale: str = "error",
                   progress: bool = True, grid: int = 1, *, jpeg_draft: bool = True, workers="auto",
                   autocast: bool = True, verify: str = "quick") -> dict:
    """Embed each image once ({image checksum: path}) with all its tokens; resumable.

    ``grid > 1``: high-resolution mode, grid x grid tiles embedded as one bag of
    grid^2 x n_tokens tokens. Decoding and the transform run in ``workers`` threads ahead of
    the model; ``jpeg_draft`` decodes JPEGs at the smallest 1/2^k scale the transform still
    needs; on CUDA the ViT runs under bfloat16 (else float16) autocast (``autocast``). Features
    are stored in float16."""
    share = parse_shard(shard)
    draft = draft_size(encoder, grid, jpeg_draft)
    amp_dtype = image_autocast_dtype(getattr(encoder, "device", "cpu"), autocast) if hasattr(encoder, "model") else None
    fp, extraction = image_fingerprint(encoder, grid=grid, draft=draft, amp_dtype=amp_dtype)
    store = EmbeddingStore.open(store_dir, fp, encoder.hidden_size, "image", on_stale, verify=verify,
                                extraction=extraction or None)
    todo = store.missing(select_shard(images, share))
    tag = "all" if shard is None else "s{}of{}".format(*share)
    n_workers = decode_workers(workers)
    failures, buffer, embedded = [], {}, 0
    repaired = _repair_report(store)

    def run_batch(keys, parts):
        if not keys:
            return
        if isinstance(parts[0], torch.Tensor):
            tokens = _forward_tokens(encoder, torch.cat(parts), amp_dtype)
        else:
            tokens = encoder.embed_batch([t for p in parts for t in p])   # (n_images * grid^2, T, D)
        buffer.update(zip(keys, tokens.reshape(len(keys), -1, tokens.shape[-1])))

    prep = lambda k: prepare_image(images[k], encoder, grid=grid, draft=draft)  # noqa: E731
    keys, parts = [], []
    bar = tqdm(total=len(todo), desc="ViT images", unit="img", disable=not progress)
    for k, fut in prefetch(todo, prep, n_workers, ahead=max(2 * batch_size, 2 * n_workers)):
        try:
            parts.append(fut.result())
            keys.append(k)
        except BadImageError as exc:
            failures.append({"key": k, "path": str(images[k]), "error": str(exc)})
        bar.update(1)
        if len(keys) >= batch_size:
            run_batch(keys, parts)
            keys, parts = [], []
        if len(buffer) >= shard_size:
            store.commit(buffer, tag)
            embedded += len(buffer)
            buffer = {}
    run_batch(keys, parts)
    bar.close()
    store.commit(buffer, tag)
    embedded += len(buffer)
    store.record_failures(failures)
    return {"requested": len(images), "embedded": embedded, "failures": failures, "repaired": repaired,
            "decode_workers": n_workers, "jpeg_draft": list(draft) if draft else None,
            "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else None}
