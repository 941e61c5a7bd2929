"""Progress bars: live where someone watches, one final line in a saved notebook, none when off."""
import io
import os

import pytest
from tqdm.auto import tqdm as auto_tqdm

from proloc_lib.core import progress


def test_final_mode_writes_nothing_while_running_and_one_line_at_close(monkeypatch):
    monkeypatch.setenv(progress.ENV, "final")
    out = io.StringIO()
    bar = progress.bar(total=60, desc="epochs (14 runs)", file=out)
    for _ in range(60):
        bar.update(1)
    assert out.getvalue() == ""                    # no redrawn intermediate states
    bar.close()
    bar.close()                                    # a second close (context manager + explicit) adds nothing
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("epochs (14 runs): 100%|") and "60/60" in lines[0]


def test_final_line_shows_where_an_early_stopped_bar_ended(monkeypatch):
    monkeypatch.setenv(progress.ENV, "final")
    out = io.StringIO()
    with progress.bar(total=50, desc="epochs", file=out) as bar:
        bar.update(35)                             # early stopping: 35 of at most 50 epochs
    assert out.getvalue().count("\n") == 1 and " 35/50 " in out.getvalue() and "70%" in out.getvalue()


def test_final_mode_over_an_iterable_yields_every_item(monkeypatch):
    monkeypatch.setenv(progress.ENV, "final")
    out = io.StringIO()
    assert list(progress.bar(range(7), desc="proteins", unit="protein", file=out)) == list(range(7))
    assert out.getvalue().count("proteins: 100%") == 1 and "7/7" in out.getvalue()


def test_off_mode_and_disable_write_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv(progress.ENV, "off")
    with progress.bar(total=3, desc="x", file=out) as bar:
        bar.update(3)
    monkeypatch.setenv(progress.ENV, "final")
    with progress.bar(total=3, desc="y", file=out, disable=True) as bar:
        bar.update(3)
    assert out.getvalue() == ""


@pytest.mark.parametrize("value", [None, "auto", "AUTO", "something-else"])
def test_auto_mode_is_tqdm_auto(monkeypatch, value):
    """Outside a saved run: tqdm.auto (a live widget in JupyterLab with ipywidgets, text in a terminal)."""
    if value is None:
        monkeypatch.delenv(progress.ENV, raising=False)
    else:
        monkeypatch.setenv(progress.ENV, value)
    assert progress.mode() == "auto"
    bar = progress.bar(total=1, disable=True)
    assert type(bar) is auto_tqdm and not isinstance(bar, progress.FinalLineBar)
    bar.close()


def test_the_runner_gives_kernels_final_bars(monkeypatch):
    from proloc_lib.stages import runner

    monkeypatch.setenv(progress.ENV, "auto")
    with runner.kernel_environment() as env:
        assert env[progress.ENV] == "final" and env["MPLBACKEND"] == runner.INLINE_BACKEND
    assert os.environ[progress.ENV] == "auto"      # restored after the run


def test_final_line_has_a_fixed_bar_width_and_a_plain_count_without_total(monkeypatch):
    monkeypatch.setenv(progress.ENV, "final")
    lines = []
    for n in (3, 120, 100000):
        out = io.StringIO()
        with progress.bar(total=n, desc="ViT images", unit="img", file=out) as bar:
            bar.update(n)
        lines.append(out.getvalue())
    # the bar itself is the same 20 cells whatever the count and rate (two runs differ only in times)
    assert len({line.split("|")[1] for line in lines}) == 1 and len(lines[0].split("|")[1]) == 20
    out = io.StringIO()
    with progress.bar(desc="sequences", unit="seq", file=out) as bar:
        bar.update(4)
    assert out.getvalue().startswith("sequences: 4 seq [") and "|" not in out.getvalue()


def test_every_progress_bar_of_the_library_comes_from_this_helper():
    """A module that imports tqdm itself brings back the IProgress warning and the redrawn stderr
    bars in executed notebooks: only core/progress.py may import it."""
    import re
    from pathlib import Path

    lib = Path(progress.__file__).resolve().parents[1]
    offenders = [str(p.relative_to(lib)) for p in lib.rglob("*.py")
                 if p.name != "progress.py" and re.search(r"^\s*(from tqdm\b|import tqdm\b)", p.read_text(), re.M)]
    assert offenders == []
