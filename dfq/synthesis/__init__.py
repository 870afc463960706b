"""Data synthesis: optimize input tensors so a frozen teacher "recognizes" them as training data."""
