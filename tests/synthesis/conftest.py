"""Synthesis tests run single-threaded: their tensors are tiny, and on a shared, loaded machine two
OpenMP threads make each step about 15x slower than one. Session-scoped so that it also covers the
session fixtures these tests use (the trained digits teacher)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
