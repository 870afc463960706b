"""Published checkpoints by URL: found in the torch hub cache, else downloaded, unless dfq is offline.

Set `DFQ_OFFLINE=1` to forbid downloads (tests, air-gapped machines); a missing file is then reported
with its URL, the cache path to put it at, and the config key that takes a local copy instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from dfq.models.errors import CheckpointError

OFFLINE_VALUES = ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether downloads are forbidden (`DFQ_OFFLINE` set to 1/true/yes/on)."""
    return os.environ.get("DFQ_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def is_url(location: str | Path) -> bool:
    """Whether a checkpoint location is a URL rather than a local path."""
    return urlparse(str(location)).scheme in ("http", "https")


def cache_path(url: str) -> Path:
    """Where torch hub (and so torchvision) keeps the file of `url`: <TORCH_HOME>/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def fetch_checkpoint(url: str, instead: str | None = None) -> Path:
    """The local copy of `url`, downloading it into the torch hub cache when allowed.

    `instead` tells the user how to use a local file instead (default: `model.checkpoint=...`).
    """
    target = cache_path(url)
    if target.is_file():
        return target
    instead = instead or f"model.checkpoint=/path/to/{target.name}"
    advice = f"download {url} to {target} (TORCH_HOME moves the cache), or pass {instead}"
    if offline():
        raise CheckpointError(
            f"checkpoint {target.name} is not in the local cache and DFQ_OFFLINE is set: {advice}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)  # writes a temp file, then renames
    except Exception as error:  # URLError, HTTPError, timeouts, SSL errors: all mean "not fetched"
        raise CheckpointError(f"could not download {url} ({error}); {advice}") from error
    return target
