"""The pieces of ``augment train`` (see :mod:`augment.train` for the entry points)."""
