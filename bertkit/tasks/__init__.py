"""Per task: examples to features, the training objective, post-processing and metrics."""
