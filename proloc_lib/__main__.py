"""``python -m proloc_lib``: the same command line as ``proloc`` (see proloc_lib.cli)."""
import sys

from .cli import main

sys.exit(main())
