"""Profile schema: every key, nested ones included, checked before any work, one-line errors
naming the key, the file that set it and the allowed keys."""
from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import fields

import pytest

from proloc_lib.cli.main import main as proloc
from proloc_lib.core.errors import UserError
from proloc_lib.core.paths import PROJECT_ROOT as ROOT
from proloc_lib.features import encoders
from proloc_lib.profiles import loader as profiles
from proloc_lib.profiles import schema
from proloc_lib.training.settings import TrainConfig, make_config


def write(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def error_of(path) -> str:
    with pytest.raises(profiles.ProfileError) as info:
        profiles.load_profile(str(path))
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, UserError)
    return msg


@pytest.mark.parametrize("text, key, allowed", [
    ("extends: full\ndata:\n  filters:\n    intensty: strong\n", "data.filters.intensty", "intensity"),
    ("extends: demo\ndata:\n  split:\n    metod: benchmark\n", "data.split.metod", "method"),
    ("extends: demo\ndata:\n  n_protiens: 10\n", "data.n_protiens", "n_proteins"),
    ("extends: demo\nembeddings:\n  max_residue: 10\n", "embeddings.max_residue", "max_residues"),
    ("extends: demo\nembeddings: {sequence: {config: {d_modle: 3}}}\n",
     "embeddings.sequence.config.d_modle", "d_model"),
    ("extends: demo\ntrainig: {}\n", "trainig", "training"),
    ("extends: demo\ntraining: {base: {n_block: 2}}\n", "training.base.n_block", "n_blocks"),
    ("extends: demo\ntraining:\n  configurations: {corrected: {optimiser: adam}}\n",
     "training.configurations.corrected.optimiser", "optimizer"),
    ("extends: demo\ntraining:\n  ablations: {x: {apply_msk: false}}\n",
     "training.ablations.x.apply_msk", "apply_mask"),
    ("extends: demo\ntraining:\n  cross_validation: {conf: corrected}\n", "training.cross_validation.conf", "config"),
    ("extends: demo\nembeddings:\n  image_variants: {augreg: {imag: {}}}\n",
     "embeddings.image_variants.augreg.imag", "image"),
])
def test_unknown_nested_key_names_key_file_and_allowed(tmp_path, text, key, allowed):
    msg = error_of(write(tmp_path, "typo", text))
    assert msg.startswith(f"{tmp_path / 'typo.yaml'}: unknown key '{key}'")
    assert (f"did you mean '{allowed}'" in msg
            and f"allowed in {key.rsplit('.', 1)[0] if '.' in key else 'the top level'}: " in msg)
    assert allowed in msg.split("allowed in")[1]


@pytest.mark.parametrize("text, key, expected", [
    ("extends: demo\ndata:\n  n_proteins: abc\n", "data.n_proteins", "integer"),
    ("extends: demo\noffline: 1\n", "offline", "boolean"),
    ("extends: demo\ndata: 5\n", "data", "dictionary"),
    ("extends: demo\ntraining: {seeds: [0, x]}\n", "training.seeds.1", "integer"),
    ("extends: demo\ntraining: {base: {lr: 1e-4}}\n", "training.base.lr", "number"),
    ("extends: demo\ntraining: {ablations: {x: {padding: weird}}}\n", "training.ablations.x.padding",
     "'batch', 'split' or 'global'"),
    ("extends: demo\ndata: {split: {method: random}}\n", "data.split.method",
     "'stratified', 'benchmark' or 'homology'"),
    ("extends: demo\nembeddings: {image: {pretrained: yes please}}\n", "embeddings.image.pretrained", "boolean"),
    ("extends: demo\nfigures: {formats: [png, gif]}\n", "figures.formats.1", "'png', 'svg' or 'pdf'"),
])
def test_wrong_type_or_value_names_key_and_file(tmp_path, text, key, expected):
    msg = error_of(write(tmp_path, "bad", text))
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: {key}: ") and expected in msg


def test_yaml_number_without_dot_gets_a_hint(tmp_path):
    assert "with a dot" in error_of(write(tmp_path, "lr", "extends: demo\ntraining: {base: {lr: 1e-4}}\n"))


def test_inherited_key_is_blamed_on_the_file_that_set_it(tmp_path):
    write(tmp_path, "parent", (ROOT / "configs" / "demo.yaml").read_text().replace("n_proteins: 150", "n_protein: 150"))
    child = write(tmp_path, "child", "extends: parent\ndescription: child\n")
    msg = error_of(child)
    assert msg.startswith(f"{tmp_path / 'parent.yaml'}: unknown key 'data.n_protein'")


def test_extends_loops_and_bad_extends(tmp_path):
    assert "'extends' makes a loop" in error_of(write(tmp_path, "me", "extends: me\n"))
    write(tmp_path, "a", "extends: b\n")
    msg = error_of(write(tmp_path, "b", "extends: a\n"))
    assert "loop" in msg and "a.yaml" in msg and "b.yaml" in msg
    assert "must name a profile" in error_of(write(tmp_path, "lst", "extends: [demo]\n"))
    assert "no profile 'nope'" in error_of(write(tmp_path, "nope_parent", "extends: nope\n"))


def test_unreadable_files(tmp_path):
    assert "not valid YAML (line" in error_of(write(tmp_path, "broken", "data: {a: [\n"))
    assert "is a mapping of keys" in error_of(write(tmp_path, "list", "- demo\n"))
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00d\x00a")
    assert "not a UTF-8 text file" in error_of(tmp_path / "bin.yaml")
    with pytest.raises(profiles.UnknownProfile, match="known profiles: demo"):
        profiles.load_profile("nope")


def test_unknown_configuration_name(tmp_path):
    msg = error_of(write(tmp_path, "of", "extends: demo\ntraining: {ablations: {x: {of: publishd}}}\n"))
    assert "training.ablations.x.of: unknown training configuration 'publishd' (known: authors, corrected)" in msg


def test_union_sections_report_the_member_meant(tmp_path):


    msg = error_of(write(tmp_path, "ctl", "extends: demo\ntraining: {control: {config: correctd}}\n"))
    assert "training.control.config: unknown training configuration 'correctd'" in msg


def test_missing_required_key(tmp_path):
    msg = error_of(write(tmp_path, "nodesc", (ROOT / "configs" / "demo.yaml").read_text().replace("description:", "#")))
    assert "missing key 'description'" in msg


def test_shipped_profiles_pass_and_are_unchanged():
    for name in ("demo", "smoke", "full"):
        cfg = profiles.load_profile(name)
        assert cfg["profile"] == name
    assert profiles.load_profile("smoke")["embeddings"] == profiles.load_profile("demo")["embeddings"]


def test_schema_follows_the_code_it_describes():
    """The schema's training overrides are TrainConfig's fields; encoder sections the encoders' keys."""
    assert set(schema.train_overrides_model().model_fields) == {f.name for f in fields(TrainConfig)}
    assert set(schema.SequenceEncoder.model_fields) == encoders.SEQUENCE_KEYS
    assert encoders.IMAGE_KEYS <= set(schema.ImageEncoder.model_fields)   # + the preprocessing keys
    assert set(schema.T5Arch.model_fields) == encoders.T5_ARCH_KEYS


def test_profile_error_is_one_line_with_exit_2_on_the_command_line(tmp_path):
    bad = write(tmp_path, "typo", "extends: demo\ndata:\n  n_protiens: 10\n")
    out = subprocess.run([sys.executable, "-m", "proloc_lib", "run", "--profile", str(bad), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "unknown key 'data.n_protiens'" in out.stderr
    assert "Traceback" not in out.stderr


def test_resplits_are_checked():
    smoke = profiles.load_profile("smoke")
    for bad in ({"methods": ["random"]}, {"methods": ["stratified"], "folds": 3}):
        with pytest.raises(ValueError, match="resplits"):
            profiles.profile_from_dict({**smoke, "training": {**smoke["training"], "resplits": bad}}, name="t")
    assert profiles.load_profile("full-extended").plan.resplits["methods"][1] == "homology"


def _demo_with(control) -> dict:
    cfg = dict(profiles.load_profile("demo"))
    return {**cfg, "training": {**cfg["training"], "control": control}}


def test_control_takes_runs_with_or_without_a_config():
    assert profiles.profile_from_dict(_demo_with({"runs": 6}), name="x").plan.control_seeds == [0, 1, 2, 3, 4, 5]
    plan = profiles.profile_from_dict(_demo_with({"config": "authors", "runs": 4}), name="x").plan
    assert plan.control == "authors" and plan.control_seeds == [0, 1, 2, 3]


@pytest.mark.parametrize("control, message", [
    ({"runz": 4}, "unknown key 'training.control.runz'; did you mean 'runs'?"),
    ({"runs": "4"}, "training.control.runs: input should be a valid integer"),
    ({"runs": 0}, "training.control.runs: input should be greater than or equal to 1"),
])
def test_bad_control_runs_are_one_line(control, message):
    with pytest.raises(schema.ProfileError, match=message.replace("(", r"\(").replace("?", r"\?")):
        profiles.profile_from_dict(_demo_with(control), name="x")


# -- ranges and consistency ----------------------------------------------------------------------
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
    assert "refers to a value that contains it" in error_of(
        write(tmp_path, "loop", "extends: demo\ndescription: &a [*a]\n"))


def test_values_quoted_in_messages_are_bounded(tmp_path):
    msg = error_of(write(tmp_path, "long", "extends: demo\noffline: '" + "x" * 100_000 + "'\n"))
    assert msg.startswith(f"{tmp_path / 'long.yaml'}: offline: input should be a valid boolean") and len(msg) < 300
    deep = "[" * 40 + "1" + "]" * 40
    msg = error_of(write(tmp_path, "deep", f"extends: demo\ndata: {{n_proteins: {deep}}}\n"))
    assert "data.n_proteins" in msg and len(msg) < 300


# -- execution switches: on in a profile, checked like any key, the run unchanged ------------------
def _with_authors(**switches):
    full = profiles.load_profile("full")
    tr = full["training"]
    configurations = {**tr["configurations"], "authors": {**tr["configurations"]["authors"], **switches}}
    return full, profiles.profile_from_dict({**full, "training": {**tr, "configurations": configurations}}, name="fast")


def test_a_profile_turns_the_switches_on_without_changing_the_run():
    full, fast = _with_authors(stack_seeds=True, capture_step="cuda")
    a, b = full.plan.configs["authors"], fast.plan.configs["authors"]
    assert (a.stack_seeds, a.capture_step) == (False, "off") and (b.stack_seeds, b.capture_step) == (True, "cuda")
    assert a.hash() == b.hash()


@pytest.mark.parametrize("switches, text", [
    ({"capture_step": "yes"},
     "training.configurations.authors.capture_step: input should be 'off', 'cuda' or 'always'"),
    ({"stack_seeds": "true"}, "training.configurations.authors.stack_seeds"),
])
def test_bad_values_are_one_line(switches, text):
    with pytest.raises(profiles.ProfileError, match=text) as err:
        _with_authors(**switches)
    assert "\n" not in str(err.value)
