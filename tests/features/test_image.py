"""Image extraction: JPEG draft decoding, parallel decoding, image feature variants, tiled bags. The
full profile's preprocessing is the published one (full JPEG decode + the ViTImageProcessor resize:
224 x 224 bilinear, whole image); JPEG draft decoding stays an option whose difference is measured
in grey levels on the real HPA image."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from proloc_lib.core import errors
from proloc_lib.core.paths import reference_dir
from proloc_lib.data.images import BadImageError, load_image
from proloc_lib.features import encoders, image, store, variants
from proloc_lib.features.encoders import load_image_encoder
from proloc_lib.profiles.loader import load_profile
from proloc_lib.stages import embeddings


def ihc_like(path, size, seed=0):
    """A textured JPEG (blobs on a noisy background), so decoding scale matters."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(size // 16, size // 16, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    im.save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def encoder():
    return load_image_encoder(load_profile("smoke")["embeddings"]["image"], device="cpu")


def test_draft_decodes_to_the_smallest_scale_still_large_enough(tmp_path):
    p = ihc_like(tmp_path / "big.jpg", 2000)
    assert load_image(p).size == (2000, 2000)
    assert load_image(p, draft=(248, 248)).size == (250, 250)        # 1/8 of 2000 >= 248
    assert load_image(p, draft=(300, 300)).size == (500, 500)        # 1/8 would be too small: 1/4
    assert load_image(p, draft=(3000, 3000)).size == (2000, 2000)    # never upscales
    png = tmp_path / "big.png"
    Image.open(p).save(png)
    assert load_image(png, draft=(248, 248)).size == (2000, 2000)    # not a JPEG: full decode
    thin = tmp_path / "thin.jpg"
    Image.new("RGB", (2000, 20)).save(thin)
    with pytest.raises(BadImageError, match="2000x20"):               # size checked before the draft
        load_image(thin, draft=(8, 8))


def test_draft_target_comes_from_the_encoder_transform(encoder):
    assert image.transform_input_size(encoder.transform) == (248, 248)   # demo: resize to 248, crop 224
    assert image.draft_size(encoder) == (248, 248)
    assert image.draft_size(encoder, grid=3) == (744, 744)               # each tile must still reach 248
    assert image.draft_size(encoder, enabled=False) is None
    assert image.transform_input_size(None, {"input_size": (3, 224, 224), "crop_pct": 1.0}) == (224, 224)
    assert image.decode_workers("auto") >= 1 and image.decode_workers(3) == 3
    with pytest.raises(ValueError):
        image.decode_workers(0)
    assert image.image_autocast_dtype("cpu") is None                     # float32 on the CPU


def test_prepared_tensor_equals_the_encoder_transform_exactly(tmp_path, encoder):
    p = ihc_like(tmp_path / "a.jpg", 700)
    im = load_image(p, draft=(248, 248))
    ours = image.prepare_image(p, encoder, draft=(248, 248))
    assert ours.shape == (1, 3, 224, 224) and torch.equal(ours[0], encoder.transform(im))
    tiles = image.prepare_image(p, encoder, grid=2)
    assert tiles.shape == (4, 3, 224, 224)
    assert torch.equal(tiles[3], encoder.transform(image.crop_grid(load_image(p), 2)[3]))


def test_parallel_decoding_gives_the_same_store_and_draft_stays_close(tmp_path, encoder):
    paths = {f"k{i}": ihc_like(tmp_path / f"im{i}.jpg", 1600, seed=i) for i in range(6)}
    stores = {}
    for name, kw in {"one": dict(workers=1), "two": dict(workers=2), "full": dict(workers=2, jpeg_draft=False)}.items():
        rep = image.extract_images(paths, encoder, tmp_path / name, batch_size=4, progress=False, **kw)
        assert rep["embedded"] == 6 and rep["decode_workers"] == kw["workers"]
        st = store.EmbeddingStore(tmp_path / name)
        stores[name] = {k: st.get(k).float() for k in paths}
    assert all(torch.equal(stores["one"][k], stores["two"][k]) for k in paths)    # order and values kept
    # draft vs full decode: a small difference, and recorded, so the two never mix in one store
    diff = max(float((stores["one"][k] - stores["full"][k]).abs().max()) for k in paths)
    scale = max(float(stores["full"][k].abs().max()) for k in paths)
    assert 0 < diff < 0.1 * scale
    one, full = store.EmbeddingStore(tmp_path / "one").meta, store.EmbeddingStore(tmp_path / "full").meta
    assert one["extraction"]["jpeg_draft"] == [248, 248] and "extraction" not in full
    assert one["fingerprint"] == full["fingerprint"] and one["fingerprint_id"] != full["fingerprint_id"]
    with pytest.raises(store.StaleStoreError):
        image.extract_images(paths, encoder, tmp_path / "full", progress=False)
    # the extraction path equals the encoder's own embed_batch on the same decoded image
    direct = encoder.embed_batch([load_image(paths["k0"], draft=(248, 248))])[0]
    torch.testing.assert_close(stores["one"]["k0"], direct.half().float(), atol=0, rtol=0)


def test_image_variants_get_their_own_stores(tmp_path):
    cfg = load_profile("smoke")
    cfg["embeddings"]["image_variants"] = {"tiles": {"crop_grid": 2},
                                           "wide": {"image": {"overrides": {"embed_dim": 32}}}}
    sections = variants.image_variants(cfg)
    assert (sections["tiles"]["crop_grid"] == 2
            and sections["wide"]["image"]["model"] == cfg["embeddings"]["image"]["model"])
    prof = tmp_path / "prof"
    (prof / "images").mkdir(parents=True)
    rows = []
    for i in range(3):
        ihc_like(prof / "images" / f"{i}.jpg", 320, seed=i)
        rows.append({"image_id": f"img{i}", "path": f"images/{i}.jpg"})
    out = tmp_path / "02"
    rep = embeddings.embed_image_stage(cfg, pd.DataFrame(rows), prof, out, "cpu", progress=False)
    assert rep["embedded"] == 3 and set(rep["variants"]) == {"tiles", "wide"}
    main, tiles, wide = (store.EmbeddingStore(variants.image_store_dir(out, v)) for v in (None, "tiles", "wide"))
    assert tiles.path.name == "images-tiles" and wide.path.name == "images-wide"
    n = main.get("img0").shape[0]
    assert tiles.get("img0").shape == (4 * n, 64) and wide.get("img0").shape == (n, 32)
    assert tiles.meta["fingerprint"]["crop_grid"] == 2
    for st in (main, tiles, wide):
        store.check_complete(st.path, [r["image_id"] for r in rows], what="image")
    with pytest.raises(store.IncompleteStoreError, match="1 of 4 items missing"):
        store.check_complete(main.path, [r["image_id"] for r in rows] + ["img9"], what="image")
    cfg["embeddings"]["image_variants"] = {"../evil": {}}
    with pytest.raises(errors.UserError, match="evil"):
        variants.image_variants(cfg)


def test_autocast_path_records_its_dtype_and_stays_close(tmp_path, encoder, monkeypatch):
    """The CUDA path (autocast) exercised on the CPU: bfloat16 compute, float16 storage."""
    paths = {f"k{i}": ihc_like(tmp_path / f"im{i}.jpg", 400, seed=i) for i in range(3)}
    image.extract_images(paths, encoder, tmp_path / "fp32", progress=False)
    monkeypatch.setattr(image, "image_autocast_dtype", lambda device, enabled=True: torch.bfloat16 if enabled else None)
    rep = image.extract_images(paths, encoder, tmp_path / "bf16", progress=False)
    assert rep["autocast"] == "bfloat16"
    a, b = store.EmbeddingStore(tmp_path / "fp32"), store.EmbeddingStore(tmp_path / "bf16")
    assert b.meta["extraction"]["autocast"] == "bfloat16" and "autocast" not in a.meta["extraction"]
    for k in paths:
        x, y = a.get(k).float(), b.get(k).float()
        assert y.dtype == torch.float32 and b.get(k).dtype == torch.float16
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
        assert cos.min() > 0.99 and not torch.equal(x, y)
    image.extract_images(paths, encoder, tmp_path / "off", progress=False, autocast=False)
    assert "autocast" not in store.EmbeddingStore(tmp_path / "off").meta["extraction"]


def test_merge_keeps_the_extraction_settings(tmp_path, encoder):
    paths = {f"k{i}": ihc_like(tmp_path / f"im{i}.jpg", 600, seed=i) for i in range(4)}
    for i in range(2):
        image.extract_images(paths, encoder, tmp_path / f"p{i}", shard=f"{i}/2", progress=False)
    merged = store.merge_stores([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m")
    assert len(merged) == 4 and merged.meta["extraction"] == {"jpeg_draft": [248, 248]}
    rep = image.extract_images(paths, encoder, tmp_path / "m", progress=False)      # the same store: nothing to do
    assert rep["embedded"] == 0


def test_high_resolution_mode_embeds_a_bag_of_tiles(tmp_path):
    class TileEnc:
        hidden_size = 2

        def fingerprint(self):
            return {"model_id": "tiles"}

        def embed_batch(self, images):   # 3 tokens per tile: tile mean colour and width
            return torch.stack([torch.tensor([[float(np.asarray(im).mean()), im.size[0]]] * 3) for im in images])

    img = Image.new("RGB", (300, 300), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 100, 100))     # only the top-left tile is white
    path = tmp_path / "big.png"
    img.save(path)
    image.extract_images({"big": path}, TileEnc(), tmp_path / "grid", grid=3, progress=False)
    grid = store.EmbeddingStore(tmp_path / "grid")
    tokens = grid.get("big").float()
    assert tokens.shape == (9 * 3, 2)
    assert tokens[0, 0] == 255 and (tokens[3:, 0] == 0).all() and (tokens[:, 1] == 100).all()
    assert grid.meta["fingerprint"]["crop_grid"] == 3
    with pytest.raises(store.StaleStoreError):      # whole-image and tiled stores never mix
        image.extract_images({"big": path}, TileEnc(), tmp_path / "grid", grid=1, progress=False)


SAMPLE = reference_dir() / "hpa_ihc_sample.jpg"
TINY_PUBLISHED = {"model": "vit_base_patch16_224", "pretrained": False, "init_seed": 0,
                  "overrides": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                  "crop_mode": "squash", "crop_pct": 1.0, "interpolation": "bilinear"}


def test_full_profile_decodes_and_embeds_as_the_published_code():
    emb = load_profile("full")["embeddings"]
    assert emb["jpeg_draft"] is False          # vit.py: Image.open, the whole JPEG decoded
    assert emb["image_autocast"] is False      # vit.py: the ViT in float32
    assert emb["max_residues"] == 5999 and emb["long_policy"] == "truncate"   # prott5.py: max_length 6000 tokens
    enc = encoders.load_image_encoder(TINY_PUBLISHED, device="cpu")
    assert image.draft_size(enc, 1, emb["jpeg_draft"]) is None


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/reference/hpa_ihc_sample.jpg not found")
def test_draft_decoding_moves_the_published_input_on_the_real_hpa_image():
    enc = encoders.load_image_encoder(TINY_PUBLISHED, device="cpu")
    full = image.encoder_input_pixels(SAMPLE, enc)[0]
    with Image.open(SAMPLE) as im:      # the published input: whole image, bilinear, 224 x 224
        want = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))
    np.testing.assert_array_equal(full, want)
    # jpeg_draft: true decodes the 3200-pixel image at 1/8 (400 px): up to ~10 grey levels off
    fast = image.decode_difference(SAMPLE, enc, draft=image.draft_size(enc, 1, True))
    assert fast["draft_decode_size"] == [400, 400] and 5 <= fast["max_grey_levels"] <= 15
    # a 1/2-scale decode (1600 px) stays within 1 grey level of the published input
    half = image.decode_difference(SAMPLE, enc, draft=(1600, 1600))
    assert half["draft_decode_size"] == [1600, 1600] and half["max_grey_levels"] <= 1
    assert half["mean_grey_levels"] < fast["mean_grey_levels"]
