"""Small jobs that tests run in a subprocess, interrupt with a real signal, and run again."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_tiny_entry  # noqa: E402

from dfq.distill.distill import distill  # noqa: E402
from dfq.distill.module import FinetuneConfig  # noqa: E402
from dfq.quant.calibrate import calibrate  # noqa: E402
from dfq.quant.policy import QuantPolicy  # noqa: E402
from dfq.quant.prepare import quantize  # noqa: E402
from dfq.synthesis.batches import synthesize  # noqa: E402
from dfq.synthesis.generators import GeneratorConfig  # noqa: E402

TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}


def distill_job(checkpoint_dir: str, out: str, epochs: int = 30) -> None:
    """Distill a W3A4 tiny student for `epochs` epochs with checkpoints, then save its state."""
    torch.set_num_threads(1)
    teacher = make_tiny_entry().module
    x = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.7 + 0.3
    student = calibrate(quantize(teacher, QuantPolicy(w_bits=3, a_bits=4), x[:2]), x)
    config = FinetuneConfig(epochs=epochs, batch_size=32, lr=0.02, crop_padding=1, flip=True, mixup=0.2)
    distill(student, teacher, x, config, trainer_options=TRAINER, checkpoint_dir=checkpoint_dir)
    torch.save(student.state_dict(), out)


def synthesis_job(path: str) -> None:
    """Synthesize 8 batches of BNS samples for the tiny network into `path` (resumable)."""
    torch.set_num_threads(1)
    recipe = GeneratorConfig(num_samples=128, batch_size=16, iterations=150, seed=3)
    synthesize(make_tiny_entry(), recipe, path, trainer_options=TRAINER)


if __name__ == "__main__":
    # a job started from a non-interactive shell inherits SIGINT ignored; a user's Ctrl-C is not
    signal.signal(signal.SIGINT, signal.default_int_handler)
    {"distill": distill_job, "synthesize": synthesis_job}[sys.argv[1]](*sys.argv[2:])
