"""tiersync engine: the database-independent core.

Nothing in this package imports a database or Kafka driver; connectors hand it
plain Python values through the seams declared in :mod:`engine.seams`.
"""

__version__ = "0.1.0"
