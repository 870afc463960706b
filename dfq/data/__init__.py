"""Data sources: each gives a named split as a TensorDataset in the model's normalized space."""

from dfq.data.source import DataSource, check_fits

__all__ = ["DataSource", "check_fits"]
