"""What users compose: the PTransform, the RunInference handler, the MLTransform providers."""
