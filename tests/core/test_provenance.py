"""The provenance note: what is real and what is not, in one line."""
from proloc_lib.core.provenance import provenance_note


def test_demo_real_and_mirror_builds_each_say_what_they_are():
    demo = {"synthetic_images": True, "random_weight_encoders": True, "real_sequences": True}
    assert provenance_note(demo) == ("Demo numbers: SYNTHETIC IHC-like images + RANDOM-WEIGHT encoders (not ProtT5/ViT "
                                     "weights), real UniProt sequences (SCL2205). Not comparable with the paper.")
    assert provenance_note({"provenance": {"synthetic_images": False}}) == "Real data and pretrained encoders."
    mirror = {"synthetic_images": True, "random_weight_encoders": False, "real_sequences": False,
              "mirror": "http://127.0.0.1:8000", "standin_sequences": 494}
    note = provenance_note(mirror)
    assert note == ("Mirror build: SYNTHETIC stand-in images from the offline mirror; 494 seeded STAND-IN sequences "
                    "(not UniProt); pretrained encoders. Not comparable with the paper.")
    assert "Demo" not in note
