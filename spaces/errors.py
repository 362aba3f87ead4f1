"""The one error type for user mistakes.

Anything raised as :class:`RoutespaceError` is the user's to fix (a bad spec, a bad flag, a missing
folder); the CLI prints it as one line and exits with code 2. Every other exception is a bug in
routespace and keeps its traceback.
"""


class RoutespaceError(ValueError):
    """A user mistake: bad input, bad configuration, or a request that cannot be met."""
