"""Which reconstruction unit carries the gap between two runs' students: the base run's student with
each unit, and with every unit up to it, taken from the donor run's student, scored on held-out
training images (never the test split). Both runs must quantize the same network the same way.

    OMP_NUM_THREADS=1 python scripts/unit_swap.py outputs/reconstruction/strict_bns_s0_w3a3 \
        outputs/reconstruction/strict_real_s0_w3a3 --out outputs/explore/unit_swap.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf
from torch.utils.data import Subset

from dfq.errors import UserError
from dfq.evaluate.unit_swap import unit_swap_top1
from dfq.models.load import normalization_from
from dfq.quant.export import load_quantized


def student_of(run: Path):
    """The run's config and its one exported student, rebuilt on the float architecture."""
    exports = sorted(run.glob("students/*/quantized.pt"))
    if len(exports) != 1:
        raise UserError(f"{run}: expected one students/<source>/quantized.pt, found {len(exports)}")
    cfg = OmegaConf.load(run / "config.yaml")
    return cfg, load_quantized(hydra.utils.instantiate(cfg.model.arch), exports[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="run directory of the student to patch")
    parser.add_argument("donor", type=Path, help="run directory of the student the units come from")
    parser.add_argument("--heldout", default="5000:10000", help="start:stop of the training images")
    parser.add_argument("--out", type=Path, help="JSON lines file to append the table to")
    args = parser.parse_args(argv)
    try:
        cfg, base = student_of(args.base)
        _, donor = student_of(args.donor)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start, stop = (int(v) for v in args.heldout.split(":"))
    data = hydra.utils.instantiate(cfg.dataset).split("train", normalization_from(cfg.model.input))
    images = Subset(data, range(start, stop))
    rows = unit_swap_top1(base, donor, images, images[0][0][None])
    for row in rows:
        print(f"{row['unit']:<16} alone {row['alone']:6.2f}  prefix {row.get('prefix', float('nan')):6.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"base": str(args.base), "donor": str(args.donor), "heldout": args.heldout, "rows": rows}
        with args.out.open("a") as out:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
