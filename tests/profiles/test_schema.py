"""Profile values: every number in its range, dependent keys consistent, duplicate keys and alias
bombs refused; all at `proloc run --check`, one line naming the key and the file."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest

from proloc_lib.cli.main import main as proloc
from proloc_lib.profiles import loader as profiles
from proloc_lib.profiles import schema
from proloc_lib.training.settings import TrainConfig, make_config


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(profiles.ProfileError) as info:
        profiles.load_profile(str(path))
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


@pytest.mark.parametrize("text, key, bound", [
    ("training: {base: {batch_size: 0}}", "training.base.batch_size", "greater than or equal to 1"),
    ("training: {base: {max_epochs: -5}}", "training.base.max_epochs", "greater than or equal to 1"),
    ("training: {base: {max_epochs: 1000000000000}}", "training.base.max_epochs", "less than or equal to 10000"),
    ("training: {configurations: {corrected: {lr: -0.01}}}", "training.configurations.corrected.lr", "greater than 0"),
    ("training: {ablations: {x: {dropout: 1.0}}}", "training.ablations.x.dropout", "less than 1"),
    ("training: {base: {warmup_frac: 1.0}}", "training.base.warmup_frac", "less than 1"),
    ("training: {base: {d_model: 100000}}", "training.base.d_model", "less than or equal to 8192"),
    ("training: {seeds: []}", "training.seeds", "at least 1 item"),
    ("training: {seeds: [-1]}", "training.seeds.0", "greater than or equal to 0"),
    ("embeddings: {shard_size: 0}", "embeddings.shard_size", "greater than or equal to 1"),
    ("embeddings: {token_budget: -1}", "embeddings.token_budget", "greater than or equal to 1"),
    ("embeddings: {decode_workers: 0}", "embeddings.decode_workers", "greater than or equal to 1"),
    ("embeddings: {image_variants: {v: {crop_grid: 100}}}", "embeddings.image_variants.v.crop_grid",
     "less than or equal to 16"),
    ("embeddings: {sequence: {config: {num_layers: 0}}}", "embeddings.sequence.config.num_layers",
     "greater than or equal to 1"),
    ("embeddings: {image: {overrides: {embed_dim: 1000000000}}}", "embeddings.image.overrides", "at most 65536"),
    ("data: {split: {val_fraction: 1.5}}", "data.split.val_fraction", "less than 1"),
    ("data: {n_proteins: 0}", "data.n_proteins", "greater than or equal to 10"),
    ("baselines: {logreg_C: 0.0}", "baselines.logreg_C", "greater than 0"),
    ("figures: {bootstrap_resamples: 1}", "figures.bootstrap_resamples", "greater than or equal to 10"),
])
def test_a_number_out_of_range_names_key_file_and_bound(tmp_path, text, key, bound):
    msg = error_of(write(tmp_path, "bad", f"extends: demo\n{text}\n"))
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: {key}: ") and bound in msg, msg


@pytest.mark.parametrize("text, key, problem", [
    ("data: {split: {val_fraction: 0.5, test_fraction: 0.6}}", "data.split.test_fraction", "sum must be below 1"),
    ("data: {split: {folds: 1}}", "data.split.folds", "at least 2"),
    ("data: {min_length: 500, max_length: 400}", "data.min_length", "above max_length 400"),
    ("training: {base: {n_heads: 5}}", "training.configurations.corrected (with training.base)",
     "n_heads=5: d_model 64 is not divisible"),
    ("training: {configurations: {corrected: {patience: 20}}}", "training", "patience=20: more than max_epochs 8"),
    ("training: {ablations: {x: {bce_weight: 0.0, focal_weight: 0.0}}}", "training", "both 0"),
])
def test_keys_that_depend_on_each_other_are_checked_together(tmp_path, text, key, problem):
    msg = error_of(write(tmp_path, "bad", f"extends: demo\n{text}\n"))
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: {key}: ") and problem in msg, msg


def test_patience_over_max_epochs_names_the_run(tmp_path):
    msg = error_of(write(tmp_path, "abl", "extends: demo\ntraining: {ablation_overrides: {max_epochs: 2}}\n"))
    assert "run ablation.reference: option patience=3: more than max_epochs 2" in msg


def test_run_check_refuses_batch_size_zero_in_one_line(tmp_path, capsys):
    bad = write(tmp_path, "zero", "extends: demo\ntraining: {configurations: {corrected: {batch_size: 0}}}\n")
    assert proloc(["run", "--profile", str(bad), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "training.configurations.corrected.batch_size" in err and str(bad) in err


def test_schema_and_train_config_share_every_range():
    """The overrides' bounds are TrainConfig's: a value just outside is refused by both, the bound
    itself (where included) accepted by both."""
    overrides = schema.train_overrides_model()
    ranges = {**TrainConfig.MODEL_RANGES, **TrainConfig.RANGES}
    assert set(ranges) <= set(overrides.model_fields)
    hints = typing.get_type_hints(TrainConfig)
    for name, bounds in ranges.items():
        kind = int if int in (typing.get_args(hints[name]) or (hints[name],)) else float
        for op, b in bounds.items():
            step = 1 if kind is int else 1e-3 * max(1.0, abs(b))
            outside = b - step if op in ("ge", "gt") else b + step
            inside_ok = op in ("ge", "le")
            extra = {"n_heads": 1} if name == "d_model" else {"d_model": 512} if name == "n_heads" else {}
            with pytest.raises(ValueError):
                make_config("corrected", **extra, **{name: kind(outside)})
            with pytest.raises(Exception):
                overrides.model_validate({name: kind(outside)})
            if inside_ok:
                value = kind(b)
                make_config("corrected", **extra, **{name: value})
                overrides.model_validate({name: value})


def test_saved_configs_keep_loading_when_only_a_run_check_fails():
    """patience > max_epochs is refused in a profile, but a saved config with it still loads."""
    cfg = make_config("corrected", max_epochs=1, patience=5)
    assert cfg.run_problem() and "patience=5" in cfg.run_problem()


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    msg = error_of(write(tmp_path, "twice", "extends: demo\ndata:\n  n_proteins: 50\ndata:\n  n_proteins: 60\n"))
    assert msg.startswith(f"{tmp_path / 'twice.yaml'}: key 'data' given twice") and "lines 2 and 4" in msg
    msg = error_of(write(tmp_path, "nested", "extends: demo\ntraining:\n  base: {max_epochs: 2, max_epochs: 3}\n"))
    assert "key 'max_epochs' given twice" in msg and "lines 3 and 3" in msg


def test_anchors_aliases_and_merge_keys_still_work(tmp_path):
    path = write(tmp_path, "anchors", "extends: demo\ntraining:\n"
                 "  configurations:\n    corrected: &c {lr: 0.001, batch_size: 16, patience: 3}\n"
                 "    authors: {max_epochs: 4}\n"
                 "  ablations:\n    mask_off: {<<: *c, apply_mask: false, batch_size: 8}\n")
    plan = profiles.load_profile(str(path)).plan
    run = next(r for r in plan.runs if r["run_id"] == "ablation.mask_off")
    assert run["train"].batch_size == 8 and run["train"].lr == 0.001 and run["train"].apply_mask is False


def test_alias_bomb_is_refused_before_anything_walks_it(tmp_path):
    # nine levels of ten aliases: 10^9 values once expanded (a few hundred bytes of YAML)
    levels = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    msg = error_of(write(tmp_path, "bomb", "extends: demo\n" + levels + "description: *a9\n"))
    assert "aliases expand to more than" in msg and "billion laughs" in msg
    assert "refers to a value that contains it" in error_of(write(tmp_path, "loop", "extends: demo\ndescription: &a [*a]\n"))


def test_values_quoted_in_messages_are_bounded(tmp_path):
    msg = error_of(write(tmp_path, "long", "extends: demo\noffline: '" + "x" * 100_000 + "'\n"))
    assert msg.startswith(f"{tmp_path / 'long.yaml'}: offline: input should be a valid boolean") and len(msg) < 300
    deep = "[" * 40 + "1" + "]" * 40
    msg = error_of(write(tmp_path, "deep", f"extends: demo\ndata: {{n_proteins: {deep}}}\n"))
    assert "data.n_proteins" in msg and len(msg) < 300
