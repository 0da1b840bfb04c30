"""The errors a user can cause. Stage scripts turn them into one clear line and exit 2."""


class SlimformerError(Exception):
    """Base: a problem with the user's input, reported without a traceback."""


class ConfigError(SlimformerError):
    """A params key that is unknown, of the wrong type or out of range."""


class DataError(SlimformerError):
    """A data file that is missing or malformed; the message names file, row and problem."""


class CheckpointError(SlimformerError):
    """A model directory that is incomplete, corrupt, foreign or unsafe to load."""
