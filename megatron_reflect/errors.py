"""The one exception family of the package.

Every error a user can cause (bad config, bad input file, a checkpoint that is not one)
is raised as a subclass of :class:`ReflectError` with a message that names the file,
line or field, so CLIs can print it without a traceback.
"""


class ReflectError(Exception):
    """Base class: an error the user can fix from its message alone."""


class ConfigError(ReflectError):
    """A configuration field is missing, unknown, mistyped or inconsistent."""


class DataError(ReflectError):
    """An input corpus, label store or dataset is malformed."""


class ConversionError(ReflectError):
    """A checkpoint cannot be converted (unsupported, incomplete, not a checkpoint)."""
