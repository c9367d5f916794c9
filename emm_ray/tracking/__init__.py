"""MLflow tracking and self-describing model artifacts (manifest + checksum)."""
