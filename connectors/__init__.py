"""Connectors: one package per database, each with the same shape.

``connection``/``errors`` (driver boundary), ``dialect`` (all SQL text and
type normalisation), ``triggers`` (DBA statements), ``reader``, ``session``
(target writes) and ``position``. Drivers are imported only here.
"""
