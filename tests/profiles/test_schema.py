"""The execution switches (stack_seeds, capture_step) in a profile: checked like every training
key, and without effect on what the run computes (its configuration hash)."""
import pytest

from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.profiles.schema import ProfileError


def _with_authors(**switches):
    full = load_profile("full")
    tr = full["training"]
    configurations = {**tr["configurations"], "authors": {**tr["configurations"]["authors"], **switches}}
    return full, profile_from_dict({**full, "training": {**tr, "configurations": configurations}}, name="fast")


def test_a_profile_turns_the_switches_on_without_changing_the_run():
    full, fast = _with_authors(stack_seeds=True, capture_step="cuda")
    a, b = full.plan.configs["authors"], fast.plan.configs["authors"]
    assert (a.stack_seeds, a.capture_step) == (False, "off") and (b.stack_seeds, b.capture_step) == (True, "cuda")
    assert a.hash() == b.hash()


@pytest.mark.parametrize("switches, text", [
    ({"capture_step": "yes"}, "training.configurations.authors.capture_step: input should be 'off', 'cuda' or 'always'"),
    ({"stack_seeds": "true"}, "training.configurations.authors.stack_seeds"),
])
def test_bad_values_are_one_line(switches, text):
    with pytest.raises(ProfileError, match=text) as err:
        _with_authors(**switches)
    assert "\n" not in str(err.value)
