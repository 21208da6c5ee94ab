"""The one exception type for mistakes a user can fix: the CLI prints its message, no traceback."""


class LmforgeError(Exception):
    """A user-facing error: bad input, bad config, missing file. The message names what is wrong."""
