"""The one exception family the CLI and app turn into a clear message instead of a traceback."""


class CbamVizError(Exception):
    """A user-facing error: its message says what is wrong and what to do, with no traceback needed."""


ECHO_CHARS = 80  # user text quoted back in a message is clipped to this


def echo(text: object, limit: int = ECHO_CHARS) -> str:
    """User input quoted for a message, clipped to `limit` characters (a pasted page must not come back whole)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"
