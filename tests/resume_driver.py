"""`hpcrobust run`, paused right after it kept some work inside a round, until it is killed (tests/test_resume.py).

    python tests/resume_driver.py WHAT K MARKER CONFIG [key=value ...]

WHAT is `step` (the K-th kept training step, counting every training phase, sharded or not), `train_attack`
(the K-th kept training attack) or `eval_attack` (the K-th kept evaluation attack result). There it writes MARKER
(rank 0) and sleeps; every rank pauses at the same point, as a kill at that moment would find them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> int:
    what, k, marker, *rest = sys.argv[1:]
    from hpcrobust.sweep import progress
    from hpcrobust.sweep.command import run_command
    from hpcrobust.training.resume import StepSaver
    from hpcrobust.training.shardsave import ShardedStepSaver

    seen = {"n": 0}

    def pause_at_k(rank: int) -> None:
        seen["n"] += 1
        if seen["n"] == int(k):
            if rank == 0:
                Path(marker).write_text(what)
            while True:
                time.sleep(1)

    if what == "step":
        for cls in (StepSaver, ShardedStepSaver):  # one file, or a sharded group's DCP folder
            def saved(self, *args, save=cls.save):
                save(self, *args)
                pause_at_k(self.group.rank)

            cls.save = saved
    else:
        keep = progress.save_attack

        def kept(ctx, run, rnd, res, training=False):
            keep(ctx, run, rnd, res, training)
            if training == (what == "train_attack"):
                pause_at_k(ctx.layout.world.rank)

        progress.save_attack = kept
    return run_command(rest[0], rest[1:], quiet=False)


if __name__ == "__main__":
    sys.exit(main())
