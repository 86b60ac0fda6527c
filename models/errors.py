"""The one exception type for user-facing errors (bad names, missing data, corrupt artifacts)."""


class SplitlabError(Exception):
    """An error caused by the user's input or environment; its message says what to fix."""
