"""What every stage reads: typed parameters, external sources (hub or mirror), the evaluation task registry and
sample, prompt sets, text formats, model loading, last-token pooling, atomic file writes, the paper's reference tables."""
