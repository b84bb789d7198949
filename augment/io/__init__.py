"""Readers and writers: Volumes in, SliceStores and synthetic sets out, all written atomically."""
