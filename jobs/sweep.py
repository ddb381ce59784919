"""What every rank executes: `python jobs/sweep.py CONFIG [key=value ...]` (srun, mpiexec, sbatch).

A thin entry point with no logic of its own; it is `hpcrobust run` for launchers that want a script.
"""

import sys

from hpcrobust.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
