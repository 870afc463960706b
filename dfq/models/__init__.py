"""Model zoo: architectures, weight loading and each model's input contract."""

from dfq.models.load import ModelEntry, build_model
from dfq.models.normalization import Normalization

__all__ = ["ModelEntry", "Normalization", "build_model"]
