"""Data layer: feature schema, raw-format adapters, synthetic generators, Ray Data input."""
