"""Progress: a bar on a terminal, rare plain lines in a file, for a real synthesis run."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import dfq.progress as progress_module
from dfq.progress import Progress

TINY = [
    "dataset.image_size=8",
    "model.input.image_size=8",
    "model.train_if_missing.epochs=2",
    "generator.num_samples=8",
    "generator.batch_size=8",
    "generator.iterations=40",
    "grid=false",
]


def test_off_a_terminal_lines_are_plain_and_rate_limited(monkeypatch: pytest.MonkeyPatch):
    stream = io.StringIO()
    with Progress(50, "work", stream) as quiet:
        for _ in range(50):
            quiet.update(loss=0.5)
    assert stream.getvalue() == ""  # finished within the minute: nothing written
    monkeypatch.setattr(progress_module, "QUIET_INTERVAL_S", 0.0)
    with Progress(4, "work", stream) as chatty:
        for _ in range(4):
            chatty.update(loss=0.5)
    lines = stream.getvalue().splitlines()
    assert lines == [f"work: {i}/4 ({25 * i}%) loss 0.5" for i in range(1, 5)]
    assert "\r" not in stream.getvalue()


def synthesize_command(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    args = [*TINY, f"out={tmp_path / 'set.pt'}", f"hydra.run.dir={tmp_path / 'run'}"]
    # TQDM_MININTERVAL=0: tqdm redraws on every update, so the bar's loss shows however fast the run is
    env = {
        **os.environ,
        "DFQ_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "TQDM_MININTERVAL": "0",
    }
    return [sys.executable, "-m", "dfq.synthesize", *args], env


def read_all(fd: int, process: subprocess.Popen) -> bytes:
    """Everything written to a pseudo-terminal until the process ends."""
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    return out


@pytest.mark.slow
def test_synthesis_shows_a_bar_on_a_terminal_and_no_carriage_returns_in_a_file(tmp_path: Path):
    command, env = synthesize_command(tmp_path / "tty")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column screen
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    screen = read_all(leader, process).decode(errors="replace")
    os.close(leader)
    assert process.wait(timeout=300) == 0, screen[-3000:]
    assert "synthesis batch 1/1:" in screen and "%|" in screen and "/40 [" in screen and "loss=" in screen
    assert "\r" in screen  # the bar redraws in place

    command, env = synthesize_command(tmp_path / "file")
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        assert subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env).returncode == 0
    written = log.read_text()
    assert "\r" not in written and "synthesis batch 1/1:" not in written
