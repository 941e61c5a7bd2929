"""proloc_lib: the library behind the ProLoc-IHS study's notebooks.

Packages, each importing only from the ones above it in this list:

- ``core``: paths, errors, file writes, manifests, run ids, provenance, devices;
- ``data``: stage 01's parts (tables, labels, downloads, mirror, demo data, splits, data card);
- ``features``: stage 02's parts (encoders, the feature store, extraction);
- ``training``: settings and plan, model, datasets, the loop, checkpoints, MIL, baselines;
- ``evaluation``: metrics, scoring, tables, statistics, figures;
- ``profiles``: profile loading and the schema;
- ``stages``: one driver per notebook (``stages.assembly`` is notebook 01, ...), and ``predict``;
- ``bench``: benchmarks; ``cli``: the ``proloc`` command line.
"""

__version__ = "0.1.0"
