"""Notebook execution: a failed notebook never replaces the last good copy and ends with its own error."""
from pathlib import Path

import nbformat
import pytest

from proloc_lib.stages import runner


def _notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_failed_notebook_keeps_the_good_copy_and_ends_with_its_own_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    dest = tmp_path / "executed" / "01_demo.ipynb"
    runner.execute_notebook(_notebook(src / "01_demo.ipynb", "print('good run', x)"), dest, {"x": 2}, progress=False)
    good = dest.read_bytes()
    assert "good run 2" in good.decode()
    bad = _notebook(src / "01_demo.ipynb", "import json\nraise ValueError('first line\\nthe short message')")
    with pytest.raises(runner.StageFailed) as err:
        runner.execute_notebook(bad, dest, {"x": 3}, progress=False)
    msg = str(err.value)
    assert msg.startswith("01_demo failed: ValueError: the short message (executed copy with the error: ")
    assert "Traceback" not in msg and "\n" not in msg and err.value.exit_code == 1
    assert dest.read_bytes() == good                                   # last good copy untouched
    failed = dest.with_name("01_demo.failed.ipynb")
    assert "the short message" in failed.read_text()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["01_demo.failed.ipynb", "01_demo.ipynb"]
    runner.execute_notebook(_notebook(src / "01_demo.ipynb", "print('again')"), dest, {}, progress=False)
    assert not failed.exists() and "again" in dest.read_text()      # a good run supersedes the failed copy
