"""The one base class for mistakes in what the user asked for (reported in one line, exit status 2)."""


class UserError(ValueError):
    """Bad configuration, a missing or mismatched file, or a model unfit for the chosen method."""
