"""The one base class for mistakes in what the user asked for (reported in one line, exit status 2)."""


class UserError(ValueError):
    """Bad configuration, a missing or mismatched file, or a model unfit for the chosen method."""


class RunFault(RuntimeError):
    """A run went wrong in a way the user must hear about in one line (a NaN loss, say)."""
