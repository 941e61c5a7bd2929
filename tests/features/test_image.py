"""The full profile's preprocessing is the published one: full JPEG decode + the ViTImageProcessor
resize (224 x 224 bilinear, whole image), no sequence cut; JPEG draft decoding stays an option
whose difference is measured in grey levels on the real HPA image."""
import numpy as np
import pytest
import torch
from PIL import Image

from proloc_lib.core.paths import reference_dir
from proloc_lib.data.hpa import read_authors_csv
from proloc_lib.features import encoders, image, sequence
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.profiles.loader import load_profile

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


class ResidueEncoder:
    """One row per residue given (what a ProtT5 store keeps: residues, no </s>)."""
    hidden_size = 2

    def fingerprint(self):
        return {"model_id": "residues"}

    def embed_batch(self, seqs):
        return [torch.arange(len(s), dtype=torch.float32)[:, None].repeat(1, 2) for s in seqs]


@pytest.mark.skipif(not (reference_dir() / "proloc_ihs_test.csv").exists(), reason="reference table not found")
def test_no_test_sequence_is_cut_under_the_full_profile(tmp_path):
    ref = read_authors_csv(reference_dir() / "proloc_ihs_test.csv")
    longest = ref.loc[ref["sequence"].str.len().idxmax()]
    assert len(longest["sequence"]) == 4061                      # FLG, the longest test protein
    emb = load_profile("full")["embeddings"]
    rep = sequence.extract_sequences({"flg": longest["sequence"]}, ResidueEncoder(), tmp_path / "s",
                                     max_residues=emb["max_residues"], long_policy=emb["long_policy"], progress=False)
    assert rep["long_sequences"] == 0 and EmbeddingStore(tmp_path / "s").get("flg").shape[0] == 4061
