"""Stage 3, robustness evaluation: scoring modes, the cached runner, metrics, paired comparison, hidden-state
representations and their command line (``python -m coinlib.evaluate params/X.yaml``)."""
