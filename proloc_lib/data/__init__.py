"""Stage 01's parts: tables, labels, sequences, images, downloads, the offline mirror, the
demo's data, splits and the data card.

``labels`` (location -> five-label mappings), ``sequences`` and ``images`` (validated inputs),
``hpa`` (the Vislocas / authors' tables), ``audit`` (checks of those tables), ``download``
(Zenodo, UniProt, HPA images), ``build`` (the full profile's tables from those sources),
``mirror`` (a local HTTP server speaking the same protocols), ``demo`` and ``synthetic`` (the
offline demo's proteins and images), ``splits`` and ``homology`` (protein-disjoint splits),
``datacard``.
"""
