"""Encoders: ProtT5 tokenization conventions, padding, determinism, ViT tokens, offline behaviour,
image preprocessing.

All models here are the demo (random-weight) configs, so the file runs offline on a CPU.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import requests
import timm  # noqa: F401  (imported up front so the timed offline tests time only the loaders)
import torch
import transformers  # noqa: F401
from PIL import Image

from proloc_lib.core import network
from proloc_lib.core.paths import CONFIG_DIR
from proloc_lib.data.images import load_image
from proloc_lib.data.sequences import prott5_format
from proloc_lib.features import encoders
from proloc_lib.features.store import fingerprint_id
from proloc_lib.profiles import loader as profiles

SEQ_DEMO = {"model": "tiny-prott5", "pretrained": False,
            "config": {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 4, "d_kv": 16},
            "init_seed": 0}
IMG_DEMO = {"model": "vit_base_patch16_224", "pretrained": False,
            "overrides": {"embed_dim": 64, "depth": 2, "num_heads": 2}, "init_seed": 0}
SEQ_FULL = {"model": "Rostlab/prot_t5_xl_half_uniref50-enc", "revision": "main", "pretrained": True}
IMG_FULL = {"model": "vit_base_patch16_224.augreg_in21k", "pretrained": True}
HF_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("enc_cache")


@pytest.fixture(scope="module")
def seq_enc(cache):
    return encoders.load_sequence_encoder(SEQ_DEMO, device="cpu", cache_dir=str(cache))


@pytest.fixture(scope="module")
def img_enc():
    return encoders.load_image_encoder(IMG_DEMO, device="cpu")


@pytest.fixture
def no_network(monkeypatch):
    """Any HTTP probe fails as on an offline machine; HF env vars unset; nothing cached."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise requests.ConnectionError(f"no route to host for {url}")

    monkeypatch.setattr(requests, "head", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    for var in HF_ENV:
        monkeypatch.delenv(var, raising=False)
    return calls


# -- tokenizer and sequence embeddings -----------------------------------------------------------
def test_tokenizer_follows_prott5_convention(seq_enc):
    tok = seq_enc.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    rare = tok(prott5_format("MKUZOB"))["input_ids"]
    assert rare == tok(prott5_format("MKXXXX"))["input_ids"]
    assert len(rare) == 6 + 1 and rare[-1] == tok.eos_token_id
    for aa in "ACDEFGHIKLMNPQRSTVWYX":  # one known piece per residue, never <unk>
        pieces = tok.tokenize(prott5_format(aa * 3))
        assert pieces == ["\u2581" + aa] * 3
    out = seq_enc.embed_batch(["MKUZOB", "MKXXXX", "ACDEFG" * 7])
    assert [tuple(t.shape) for t in out] == [(6, 64), (6, 64), (42, 64)]
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in out)
    assert torch.equal(out[0], out[1])  # rare residues embed as X


def test_end_token_row_is_the_hidden_state_at_the_eos_position(seq_enc):
    """end_token=True appends the row of the </s> token (the published prott5.py keeps it), in a
    padded batch too; the residue rows are those given without it."""
    short, long_ = "MSTNPKPQRKTKRNTNRRPQ", "ACDEFGHIKLMNPQRSTVWY" * 3
    ids = seq_enc.tokenizer(prott5_format(short), return_tensors="pt")["input_ids"]
    eos_at = int((ids[0] == seq_enc.tokenizer.eos_token_id).nonzero()[0, 0])
    assert eos_at == len(short) and ids.shape[1] == len(short) + 1    # </s> right after the residues
    with torch.inference_mode():
        hidden = seq_enc.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    kept = seq_enc.embed_batch([long_, short], end_token=True)
    dropped = seq_enc.embed_batch([long_, short])
    assert [tuple(t.shape) for t in kept] == [(len(long_) + 1, 64), (len(short) + 1, 64)]
    torch.testing.assert_close(kept[1][-1], hidden[eos_at], atol=1e-5, rtol=0)
    torch.testing.assert_close(kept[1][:-1], hidden[:eos_at], atol=1e-5, rtol=0)
    for k, d in zip(kept, dropped):
        assert torch.equal(k[:-1], d)
    assert not torch.allclose(kept[1][-1], kept[1][-2])    # a row of its own, not a residue's


def test_vocab_is_deterministic_and_reused(tmp_path):
    a = encoders.build_prott5_vocab(tmp_path / "a")
    b = encoders.build_prott5_vocab(tmp_path / "b")
    assert a.name == "spiece.model" and a.read_bytes() == b.read_bytes()
    stamp = a.stat().st_mtime_ns
    assert encoders.build_prott5_vocab(tmp_path / "a") == a and a.stat().st_mtime_ns == stamp
    a.write_bytes(b"corrupt")  # a damaged cached file is rebuilt, not trusted
    assert encoders.build_prott5_vocab(tmp_path / "a").read_bytes() == b.read_bytes()


def test_padding_does_not_leak(seq_enc):
    short = "MSTNPKPQRKTKRNTNRRPQDVKFPGG"
    alone = seq_enc.embed_batch([short])[0]
    batched = seq_enc.embed_batch(["ACDEFGHIKLMNPQRSTVWY" * 15, short])
    assert batched[1].shape == alone.shape
    assert torch.allclose(batched[1], alone, atol=1e-5)
    assert batched[0].shape == (300, 64)


def test_seed_determines_weights_and_fingerprint(seq_enc, cache):
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GLSDGEWQQVLNVWGKVEAD"]
    again = encoders.load_sequence_encoder(SEQ_DEMO, device="cpu", cache_dir=str(cache))
    assert again.fingerprint() == seq_enc.fingerprint()
    for x, y in zip(seq_enc.embed_batch(seqs), again.embed_batch(seqs)):
        assert torch.equal(x, y)
    other = encoders.load_sequence_encoder(dict(SEQ_DEMO, init_seed=1), device="cpu", cache_dir=str(cache))
    assert other.fingerprint() != seq_enc.fingerprint()
    assert not torch.allclose(other.embed_batch(seqs)[0], seq_enc.embed_batch(seqs)[0])


def test_seeding_leaves_global_rng_alone(cache):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    encoders.load_sequence_encoder(SEQ_DEMO, device="cpu", cache_dir=str(cache))
    assert torch.equal(torch.rand(3), expected)


def test_fingerprint_labels_random_weights(seq_enc, img_enc):
    fp = seq_enc.fingerprint()
    assert fp["random_weights"] is True and fp["init_seed"] == 0
    assert fp["model_id"] == "tiny-prott5" and fp["config"] == SEQ_DEMO["config"]
    assert fp["preprocessing"] == encoders.PROTT5_PREPROCESSING and fp["dtype"] == "float32"
    ifp = img_enc.fingerprint()
    assert ifp["random_weights"] is True and ifp["overrides"] == IMG_DEMO["overrides"]
    assert ifp["n_tokens"] == 197 and ifp["hidden_size"] == 64


# -- images --------------------------------------------------------------------------------------
def test_vit_tokens_and_transform(img_enc):
    assert (img_enc.n_tokens, img_enc.hidden_size) == (197, 64)
    im = Image.new("RGB", (300, 260), (200, 120, 40))
    assert tuple(img_enc.transform(im).shape) == (3, 224, 224)
    out = img_enc.embed_batch([im, im.rotate(90)])
    assert out.shape == (2, 197, 64) and out.dtype == torch.float32 and out.device.type == "cpu"


def test_demo_vit_uses_the_in21k_transform(img_enc):
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    ref = resolve_data_config(pretrained_cfg=get_pretrained_cfg(IMG_FULL["model"]).to_dict())
    assert img_enc.data_config == ref


def test_grayscale_and_cmyk_images_embed(img_enc, tmp_path):
    gray = tmp_path / "gray.png"
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("L", (300, 260), 90).save(gray)
    Image.new("CMYK", (280, 300), (10, 200, 30, 0)).save(cmyk)
    pics = [load_image(gray), load_image(cmyk)]
    assert [p.mode for p in pics] == ["RGB", "RGB"]
    out = img_enc.embed_batch(pics)
    assert out.shape == (2, 197, 64) and torch.isfinite(out).all()


def test_image_seed_determinism():
    im = Image.new("RGB", (240, 240), (30, 60, 90))
    a = encoders.load_image_encoder(IMG_DEMO, device="cpu").embed_batch([im])
    b = encoders.load_image_encoder(IMG_DEMO, device="cpu").embed_batch([im])
    c = encoders.load_image_encoder(dict(IMG_DEMO, init_seed=1), device="cpu").embed_batch([im])
    assert torch.equal(a, b) and not torch.allclose(a, c)


# -- offline behaviour ---------------------------------------------------------------------------
def test_full_sequence_encoder_fails_fast_offline(no_network, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(network.OfflineError) as err:
        encoders.load_sequence_encoder(SEQ_FULL, device="cpu", cache_dir=str(tmp_path))  # empty cache
    assert time.perf_counter() - t0 < 1.0
    assert SEQ_FULL["model"] in str(err.value) and "Colab" in str(err.value)
    assert no_network  # it did try the hub, once, before any download


def test_full_image_encoder_fails_fast_offline(no_network, monkeypatch):
    monkeypatch.setattr(encoders, "_cached_file", lambda *a, **k: None)  # ignore any real HF cache
    t0 = time.perf_counter()
    with pytest.raises(network.OfflineError) as err:
        encoders.load_image_encoder(IMG_FULL, device="cpu")
    assert time.perf_counter() - t0 < 1.0
    assert IMG_FULL["model"] in str(err.value) and "Colab" in str(err.value)


def test_hf_hub_offline_fails_without_any_request(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(network.OfflineError, match="HF_HUB_OFFLINE"):
        encoders.load_sequence_encoder(SEQ_FULL, device="cpu", cache_dir=str(tmp_path))
    assert no_network == []


def test_pretrained_path_loads_from_local_hf_cache_without_network(no_network, seq_enc, tmp_path):
    """The real from_pretrained path, fed from a hub-layout cache holding a tiny model."""
    repo, commit = "local/tiny-prott5-pretrained", "0" * 40
    root = tmp_path / "models--local--tiny-prott5-pretrained"
    snap = root / "snapshots" / commit
    seq_enc.model.save_pretrained(snap)
    shutil.copy(encoders.build_prott5_vocab(tmp_path / "vocab"), snap / "spiece.model")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    enc = encoders.load_sequence_encoder({"model": repo, "revision": "main", "pretrained": True},
                                  device="cpu", cache_dir=str(tmp_path))
    assert no_network == []
    fp = enc.fingerprint()
    assert fp["random_weights"] is False and fp["model_id"] == repo and fp["dtype"] == "float32"
    seqs = ["MKUZOBACDE", "GLSDGEWQQVLNVWGKVEAD"]
    for x, y in zip(enc.embed_batch(seqs), seq_enc.embed_batch(seqs)):
        assert torch.allclose(x, y, atol=1e-6)


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("loader, cfg, bad", [
    (encoders.load_sequence_encoder, dict(SEQ_DEMO, init_sead=0), "init_sead"),
    (encoders.load_sequence_encoder, dict(SEQ_FULL, revison="v1"), "revison"),
    (encoders.load_image_encoder, dict(IMG_DEMO, overides={}), "overides"),
    (encoders.load_image_encoder, dict(IMG_FULL, revision="main"), "revision"),
    (encoders.load_sequence_encoder, dict(SEQ_DEMO, config=dict(SEQ_DEMO["config"], n_layers=3)), "n_layers"),
])
def test_unknown_config_key_is_named(loader, cfg, bad):
    with pytest.raises(ValueError, match=bad):
        loader(cfg, device="cpu")


def test_pretrained_flag_is_required_and_consistent():
    with pytest.raises(ValueError, match="pretrained"):
        encoders.load_image_encoder({"model": "vit_base_patch16_224"}, device="cpu")
    with pytest.raises(ValueError, match="init_seed"):
        encoders.load_sequence_encoder(dict(SEQ_FULL, init_seed=0), device="cpu")


def test_vocab_normalizer_is_a_valid_compiled_table(tmp_path):
    """An empty precompiled_charsmap breaks transformers 5.10-5.19 ('Cannot parse precompiled_charsmap'):
    the tiny vocabulary carries a real compiled table that both sentencepiece and tokenizers parse."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as spm_pb
    from tokenizers import normalizers

    path = encoders.build_prott5_vocab(tmp_path)
    proto = spm_pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    assert len(charsmap) > 0
    assert normalizers.Precompiled(charsmap).normalize_str("M\u3000KLX") == "M KLX"  # parses; residues unchanged
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.encode("M K U X", out_type=str) == ["\u2581M", "\u2581K", "\u2581U", "\u2581X"]
    assert sp.encode("M\u3000K", out_type=str) == ["\u2581M", "\u2581K"]
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)


# -- image preprocessing as explicit encoder keys: the published resize (224 x 224, bilinear, no crop)
TINY = {"model": "vit_base_patch16_224", "pretrained": False,
        "overrides": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "init_seed": 0}
PUBLISHED = {"crop_mode": "squash", "crop_pct": 1.0, "interpolation": "bilinear"}


def published_processor(im: Image.Image) -> torch.Tensor:
    """What transformers' ViTImageProcessor does for google/vit-base-patch16-224-in21k (the published
    vit.py): PIL resize to 224 x 224 with BILINEAR, scale to [0, 1], normalize with mean = std = 0.5."""
    x = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)


def _image(w=400, h=250, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_published_preprocessing_is_a_plain_resize_without_crop():
    enc = encoders.load_image_encoder({**TINY, **PUBLISHED}, device="cpu")
    im = _image()                                        # not square: a crop would lose the sides
    torch.testing.assert_close(enc.transform(im), published_processor(im), atol=1e-6, rtol=0)
    # the default (timm's crop_pct 0.9, bicubic, center crop) is a different input
    default = encoders.load_image_encoder(TINY, device="cpu")
    assert not torch.allclose(default.transform(im), published_processor(im), atol=0.05)


def test_preprocessing_enters_the_store_fingerprint():
    a = encoders.load_image_encoder({**TINY, **PUBLISHED}, device="cpu").fingerprint()
    b = encoders.load_image_encoder(TINY, device="cpu").fingerprint()
    c = encoders.load_image_encoder({**TINY, **PUBLISHED, "crop_pct": 0.9}, device="cpu").fingerprint()
    assert a["preprocessing"] == {"crop_mode": "squash", "crop_pct": 1.0, "interpolation": "bilinear"}
    assert len({fingerprint_id(a), fingerprint_id(b), fingerprint_id(c)}) == 3   # each its own store


@pytest.mark.parametrize("bad, msg", [({"crop_pct": 1.5}, "crop_pct"), ({"crop_pct": True}, "crop_pct"),
                                      ({"crop_mode": "border"}, "crop_mode"),
                                      ({"interpolation": "nearest"}, "interpolation")])
def test_bad_preprocessing_values_are_named(bad, msg):
    with pytest.raises(ValueError, match=msg):
        encoders.load_image_encoder({**TINY, **bad}, device="cpu")


def test_full_profiles_use_the_published_encoder_and_list_the_variants():
    for path in sorted(CONFIG_DIR.glob("full*.yaml")):
        cfg = profiles.load_profile(path.stem)
        img = cfg["embeddings"]["image"]
        assert img["model"] == "vit_base_patch16_224.orig_in21k", path.name
        assert {k: img[k] for k in PUBLISHED} == PUBLISHED, path.name
        variants = cfg["embeddings"].get("image_variants") or {}
        if path.name == "full-extended.yaml":  # the ablation tier; `full` is the main table only
            assert variants["augreg"]["image"]["model"] == "vit_base_patch16_224.augreg_in21k"
            assert variants["tiles"]["crop_grid"] == 3
