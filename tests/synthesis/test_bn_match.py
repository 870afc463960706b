"""scripts/bn_match.py: the CIFAR ResNet's BN statistics match its training crops, not plain images."""

from __future__ import annotations

import re

from tests.conftest import load_script


def test_resnet20_statistics_were_recorded_on_padded_crops(shared_dir, capsys):
    script = load_script("bn_match")
    overrides = ["experiment=cifar10_resnet20", f"paths.shared_dir={shared_dir}"]
    assert script.main([*overrides, "--images", "256", "--layers", "3"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| layer1.0.bn1 |"))
    plain, cropped = (float(m) for m in re.findall(r"(\d\.\d\d) / \d\.\d\d", row))
    assert plain < 0.85 and 0.95 < cropped < 1.05
