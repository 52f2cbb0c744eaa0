"""User-facing errors: one clear line, non-zero exit."""


class PruneError(Exception):
    """An error caused by the user's input or environment; printed as one line, never a traceback."""


class AssetMissingError(PruneError):
    """A packaged asset (model, corpus) is not installed; the message names the pip command."""


class RunFailedError(PruneError):
    """The run started but its result is not a number to report (NaN loss, diverged fine-tune)."""
