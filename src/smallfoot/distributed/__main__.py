"""Data-parallel training from a TOML run configuration.

    torchrun --standalone --nproc-per-node 2 -m smallfoot.distributed --config run.toml
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m smallfoot.distributed --config run.toml --sync average
    python -m smallfoot.distributed --nproc 2 --config run.toml      # torchrun's launcher, locally
    python -m smallfoot.distributed --nproc 2 --resume runs/<id>     # continue from its checkpoint

Under torchrun (``RANK`` and ``LOCAL_WORLD_SIZE`` set) each process runs one rank; otherwise
``launch`` starts ``--nproc`` local processes. Rank 0 prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from smallfoot.compress import CodecConfig
from smallfoot.config import load_config
from smallfoot.distributed.launcher import SYNCS, check_launch, launch, train_rank
from smallfoot.errors import SmallfootError


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train, print rank 0's summary; returns the exit status (2: user error)."""
    parser = argparse.ArgumentParser(
        prog="python -m smallfoot.distributed", description=__doc__.split("\n\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="TOML run configuration")
    source.add_argument("--resume", help="continue this run directory from its checkpoint")
    parser.add_argument(
        "--nproc", type=int, default=1, help="local processes (ignored under torchrun)"
    )
    parser.add_argument(
        "--sync",
        choices=SYNCS,
        default="ddp",
        help="ddp, average (thesis ch. 3), average-ef (with error feedback) or DDP with a "
        "gradient hook: ddp-entropy, ddp-fp16, ddp-powersgd",
    )
    parser.add_argument("--every", type=int, default=1, help="steps between parameter averages")
    parser.add_argument("--c", type=int, default=6, help="quantisation floor c (bits)")
    parser.add_argument("--m", type=int, default=4, help="bits M of the entropy estimate")
    parser.add_argument(
        "--fraction", type=float, default=0.03, help="share F of values sampled for H"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config or Path(args.resume) / "config.toml")
        config.validate()
        codec = CodecConfig(c=args.c, m=args.m, fraction=args.fraction)
        if "RANK" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
            check_launch(config, int(os.environ["WORLD_SIZE"]), args.sync)
            summary = train_rank(config, args.sync, codec, args.every, args.resume)
        else:
            summary = launch(config, args.nproc, args.sync, codec, args.every, args.resume)
    except SmallfootError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
