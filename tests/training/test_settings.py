"""Training configurations: the named ones differ exactly as documented, unknown options fail before
any work."""
import pytest
import torch

from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.training import loop, settings
from proloc_lib.training.plan import build_plan


def test_named_configurations_differ_exactly_as_documented():
    a, c = settings.make_config("authors"), settings.make_config("corrected")
    assert ((a.share_blocks, a.apply_mask, a.optimizer, a.lr, a.batch_size, a.dropout)
            == (True, False, "adam", 1e-5, 2, 0.5))
    assert ((a.select_on, a.thresholds, a.loss, a.padding, a.patience)
            == ("train_loss", "fixed", "authors", "split", None))
    assert ((c.share_blocks, c.apply_mask, c.select_on, c.thresholds, c.bucket_batches)
            == (False, True, "val_loss", "tuned", True))
    assert (a.attn_dropout, c.attn_dropout, c.dropout) == (None, 0.0, 0.1)  # None: attention takes `dropout`
    attn_p = [m.dropout for m in loop.build_model(a, 8, 8, 5).modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attn_p == [0.5] * 2  # cross-attention + the one shared block
    attn_p = [m.dropout for m in loop.build_model(c, 8, 8, 5).modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attn_p == [0.0] * (1 + c.n_blocks)
    # one switch at a time, for the ablations
    assert settings.make_config("corrected", apply_mask=False).apply_mask is False
    assert settings.make_config("corrected").hash() != settings.make_config("corrected", apply_mask=False).hash()


def test_unknown_options_fail_before_any_work():
    with pytest.raises(ValueError, match="learning_rate"):
        settings.make_config("corrected", learning_rate=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        settings.make_config("corrected", optimizer="sgd")
    with pytest.raises(ValueError, match="unknown training configuration"):
        settings.make_config("paper")
    with pytest.raises(ValueError, match="epochs"):
        profile_from_dict({**load_profile("smoke"), "training": {"epochs": 3}}, name="t")
    plan = build_plan({"seeds": [0, 1], "base": {"d_model": 16, "n_heads": 2},
                       "configurations": {"corrected": {}, "authors": {}},
                       "ablations": {"mask off": {"of": "corrected", "apply_mask": False}}}).runs
    assert [r["run_id"] for r in plan] == ["fusion.corrected", "fusion.authors"] * 2 + [
        "ablation.reference", "ablation.mask_off"]
    assert plan[-1]["train"].apply_mask is False and plan[-1]["train"].d_model == 16


def test_config_hash_of_every_earlier_configuration_is_unchanged():
    """train_on enters the hash only away from "train": the named configurations as they were before
    it existed keep their hashes (checkpoints, resume states); authors' own (train+val) is new."""
    assert settings.make_config("authors", train_on="train", end_token="drop").hash() == "3e91fe0b4a36"
    assert settings.make_config("corrected").hash() == "d5fedadf0dea"
    d = settings.train_config_dict(settings.make_config("corrected"))
    d.pop("train_on")   # a configuration written before the switch existed
    assert settings.TrainConfig.from_dict(d).hash() == "d5fedadf0dea"
    assert settings.make_config("authors").hash() != "3e91fe0b4a36"
    assert settings.make_config("authors").train_on == "train+val"
    with pytest.raises(ValueError, match="train_on"):
        settings.make_config("corrected", train_on="everything")


def test_end_token_enters_the_hash_only_when_kept():
    """end_token "drop" (the rows every earlier configuration saw) leaves every hash as it was;
    "keep" (authors: the published input, </s> row included) is a configuration of its own."""
    corrected = settings.make_config("corrected")
    assert corrected.end_token == "drop" and corrected.hash() == "d5fedadf0dea"
    d = settings.train_config_dict(corrected)
    d.pop("end_token")   # a configuration written before the switch existed: its rows were dropped
    assert settings.TrainConfig.from_dict(d).end_token == "drop"
    assert settings.TrainConfig.from_dict(d).hash() == "d5fedadf0dea"
    authors = settings.make_config("authors")
    assert authors.end_token == "keep"
    assert authors.hash() != settings.make_config("authors", end_token="drop").hash()
    assert settings.make_config("corrected", end_token="keep").hash() != "d5fedadf0dea"
    with pytest.raises(ValueError, match="end_token"):
        settings.make_config("corrected", end_token="both")
