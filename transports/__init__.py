"""Transports between nodes (the seam is engine.transport.Transport)."""
