"""Avro schemas of the change envelope; read with importlib.resources."""
