"""The errors a user can cause; the CLI prints their message on one line and exits 1."""


class AugmentError(Exception):
    """Base of every error that is the input's or the configuration's fault, not a bug."""


class ConfigError(AugmentError, ValueError):
    """A parameter file or option that does not fit the stage's configuration."""


class InputError(AugmentError, ValueError):
    """An input file that cannot be used; the message names the file and the problem."""


class StoreError(AugmentError, ValueError):
    """A stage directory (slice store, model, synthetic set) that breaks its contract."""
