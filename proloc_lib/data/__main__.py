"""The old entry ``python -m proloc_lib.data``: replaced by `proloc audit` and `proloc mirror`."""
import importlib

importlib.import_module("proloc_lib.cli.legacy").forward("data")
