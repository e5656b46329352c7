"""Base class of the errors that d2_sfm reports to users as one clear line (no traceback)."""


class D2SfmError(Exception):
    """A user-facing problem with an input (file, option, dataset); the message names it."""


class ConfigError(D2SfmError, ValueError):
    """An option value that cannot be used (on this device); the message names the option."""
