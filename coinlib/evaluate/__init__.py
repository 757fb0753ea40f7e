"""Stage 3, robustness evaluation: scoring modes, the cached runner, metrics, paired comparison and its command
line (``python -m coinlib.evaluate params/X.yaml``)."""
