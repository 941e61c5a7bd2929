"""Progress bars: the one place that picks how they look.

``PROLOC_PROGRESS`` chooses, and ``stages.runner`` sets it for the kernels whose executed copies
are saved:

* ``auto`` (default): ``tqdm.auto``, i.e. a live widget bar in JupyterLab (with ipywidgets, the
  ``[lab]`` extra) and a text bar in a terminal;
* ``final``: nothing while the bar runs and one plain line, its final state, when it closes, on
  stdout. An executed notebook then keeps each bar once, finished, with no widget that a viewer
  would show at 0% and no stderr box;
* ``off``: no bars.
"""

from __future__ import annotations

import os
import sys
import warnings

from tqdm import std

ENV = "PROLOC_PROGRESS"
MODES = ("auto", "final", "off")


def mode() -> str:
    """The mode named by ``$PROLOC_PROGRESS`` (unknown values count as ``auto``)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    return value if value in MODES else "auto"


class FinalLineBar(std.tqdm):
    """A text bar that writes nothing while it runs and one line, its final state, when closed."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("file", sys.stdout)
        kwargs["mininterval"] = kwargs["delay"] = float("inf")   # never redrawn, never shown early
        # a fixed bar width: the line differs between two runs only in its times (nbval compares them)
        kwargs.setdefault("bar_format", "{l_bar}{bar:20}{r_bar}")
        super().__init__(*args, **kwargs)
        if not self.total:                  # nothing to fill: the count alone
            self.bar_format = "{desc}: {n_fmt} {unit} [{elapsed}]"

    def close(self):
        if not self.disable:
            line = self.format_meter(**self.format_dict)
            self.fp.write(line.replace("\r", "") + "\n")
            self.fp.flush()
        super().close()


def _auto_class():
    # tqdm.auto warns ("IProgress not found") at import in a kernel without ipywidgets: it is
    # imported only where a live bar is wanted
    from tqdm.auto import tqdm

    return tqdm


def bar(iterable=None, *, total=None, desc: str | None = None, unit: str = "it", disable: bool = False, **kwargs):
    """A progress bar in the current :func:`mode` (same arguments as ``tqdm``)."""
    chosen = mode()
    cls = FinalLineBar if chosen == "final" else _auto_class()
    return cls(iterable, total=total, desc=desc, unit=unit, disable=disable or chosen == "off", **kwargs)


def quiet_third_party_bars() -> None:
    """In ``final`` mode, import ``tqdm.auto`` once with its "IProgress not found" warning
    silenced, so a library that imports it later (huggingface_hub) adds no warning to the executed
    copy; the warning only says that live widget bars are unavailable, and none are shown there."""
    if mode() != "final" or "tqdm.autonotebook" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", std.TqdmWarning)
        import tqdm.autonotebook  # noqa: F401


quiet_third_party_bars()
