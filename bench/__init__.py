"""Benchmarks of the signing path against raw baselines (``make bench``).

Three phases, each next to the baseline that bounds it:

* ``hsm``: python-pkcs11 signing straight on a SoftHSM2 session, then the
  same signatures through :class:`hsm.Hsm` with 1 and 16 callers;
* ``sam``: :meth:`sam.SignatureActivationModule.verify_and_sign` on a real
  SQLite store, against the ceiling of one SAD verification plus one raw
  signature;
* ``http``: whole transactions over loopback HTTP with 32 simulated phones,
  against a bare aiohttp JSON handler driven by the same load generator.

docs/benchmarks.md explains what each figure means and shows a real run.
"""

from __future__ import annotations

__all__: list[str] = []
