"""User-facing errors: one clear line, non-zero exit."""


class PruneError(Exception):
    """An error caused by the user's input or environment; printed as one line, never a traceback."""


class AssetMissingError(PruneError):
    """A packaged asset (model, corpus) is not installed; the message names the pip command."""


def require_int(value: object, name: str, minimum: int = 1, null: str | None = None) -> None:
    """``value`` must be an integer >= ``minimum`` (a bool is not one); with ``null`` (what null
    means, e.g. ``"for the whole text"``, or ``""``) None is allowed too. Else one line naming ``name``."""
    if value is None and null is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise PruneError(f"{name} must be {kind}" + (f", or null {null}" if null else "") + f" (got {value!r})")


class RunFailedError(PruneError):
    """The run started but its result is not a number to report (NaN loss, diverged fine-tune)."""
