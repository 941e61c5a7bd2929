"""``python -m proloc_lib``: the same command line as ``proloc`` (see proloc_lib.cli)."""
import sys

from proloc_lib.cli.main import main

sys.exit(main())
