"""The typed contracts between stages: volumes, slice store, model dir, synthetic sets."""
