"""What the command-line tests share: `proloc` run in this process."""
import pytest

from proloc_lib.cli.main import main


@pytest.fixture
def run_proloc(capsys):
    """Function (argv) -> (exit code, stdout, stderr) of `proloc argv`, run in this process."""
    def run(argv):
        rc = main(argv)
        out = capsys.readouterr()
        return rc, out.out, out.err
    return run
