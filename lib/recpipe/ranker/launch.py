"""Train one ranker from a job file, under torchrun or as a single process.

    torchrun --nproc_per_node 2 -m recpipe.ranker.launch --job job.json [--result out.json]
    python -m recpipe.ranker.launch --job job.json          # no RANK: one process

The job file holds the fields of `trainer.TrainJob` as JSON (`recpipe train` builds the
same job and hands it to TorchDistributor). Ranks read RANK, WORLD_SIZE and LOCAL_RANK
from the environment that torchrun sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from recpipe.logs import stderr_is_terminal
from recpipe.ranker import dist
from recpipe.ranker.trainer import TrainJob, train


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recpipe.ranker.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path, help="JSON file with the TrainJob fields")
    parser.add_argument("--result", type=Path, help="where rank 0 writes the training summary (JSON)")
    parser.add_argument("--resume", action="store_true", help="continue from the job's last checkpoint")
    args = parser.parse_args(argv)
    fields = json.loads(args.job.read_text())
    if args.resume:
        fields["resume"] = True
    # torchrun leaves the ranks its own stderr: a bar only where that is a terminal.
    fields["progress"] = fields.get("progress", False) and stderr_is_terminal()
    summary = train(TrainJob(**fields))
    if args.result and dist.is_main():
        args.result.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
