"""Data schemas shipped with tiersync (Avro under ``schemas/avro``)."""
