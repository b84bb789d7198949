"""augment: synthetic training data for medical imaging, made and judged honestly."""

__version__ = "0.1.0"
