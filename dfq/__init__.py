"""dfq: data-free model compression.

Synthesize samples from what a trained network knows (its BatchNorm statistics), then use them
to calibrate and fine-tune a low-bit quantized copy of it.
"""

__version__ = "0.1.0"
