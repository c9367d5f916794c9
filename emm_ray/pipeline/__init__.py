"""The whole run, raw data to a served model: stage order, the run config, the summary."""
