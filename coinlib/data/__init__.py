"""Stage 1, the contrastive training data: FLAN templates, original/positive/hard-negative entries, perturbed
positives."""
