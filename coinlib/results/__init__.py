"""Stage 4, results of trained and evaluated runs: inputs, tables (no I/O), figures (one style),
and the RESULTS.md report (``python -m coinlib.results params/X.yaml``)."""
