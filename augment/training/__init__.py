"""The pieces of ``augment train`` (see :mod:`augment.training.stage` for the entry points)."""
