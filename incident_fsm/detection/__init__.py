"""Seeing problems: health probes, payload parsing, dependency checks and the detector."""
