"""Sampling: synthetic slice sets from a trained generator (``augment sample``)."""
