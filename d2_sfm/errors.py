"""Base class of the errors that d2_sfm reports to users as one clear line (no traceback)."""


class D2SfmError(Exception):
    """A user-facing problem with an input (file, option, dataset); the message names it."""


class ConfigError(D2SfmError, ValueError):
    """An option value that cannot be used (on this device); the message names the option."""


def check_options(owner: str, **problems: bool) -> None:
    """Raise ConfigError naming every option of `owner` whose check failed (value True = bad);
    the option names are the keyword names, e.g. check_options("matcher", chunk_size=size < 1)."""
    bad = [name for name, failed in problems.items() if failed]
    if bad:
        raise ConfigError(f"{owner}: invalid {', '.join(bad)} (see --help for the allowed values)")
