"""Evaluation: does the synthetic data help downstream models? (``augment evaluate``)."""
