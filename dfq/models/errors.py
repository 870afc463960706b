"""The error for weights that cannot be found, read or loaded into the architecture."""

from dfq.errors import UserError


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, or does not fit the model."""
