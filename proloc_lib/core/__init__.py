"""Foundations every layer uses, with no heavy imports: paths, errors, atomic file writes,
stage manifests, run ids, provenance notes, devices and threads, network reachability.

``paths`` (where things live), ``errors`` (one-line user errors, exit codes), ``fileio``
(atomic writes, umask, checksums), ``manifest`` (stage provenance), ``runs`` (run ids and display
names), ``provenance`` (what is real and what is not), ``runtime`` (device, seeds, threads),
``network`` (reachability checks, the offline error).
"""
