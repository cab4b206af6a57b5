"""The one exception family the CLI and app turn into a clear message instead of a traceback."""


class CbamVizError(Exception):
    """A user-facing error: its message says what is wrong and what to do, with no traceback needed."""
