"""The model and its training: settings and plan (no torch), datasets, the loop, checkpoints,
attention MIL and the baselines.

``settings`` (every switch of the published vs corrected protocol), ``plan`` (a profile's
runs), ``model``, ``losses``, ``selection``, ``datasets`` (samples, batches, device-resident
features), ``loop`` (training several runs at once, resume), ``checkpoint``, ``mil``,
``baselines``.
"""
