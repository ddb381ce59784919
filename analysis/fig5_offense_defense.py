"""Figure 5: attack FLOPs needed to reach 1, 2 and 5% ASR against cumulative defense FLOPs,
log-log, with slope-1 (parity) guides and a per-size slope with a bootstrap CI over seeds.

    python analysis/fig5_offense_defense.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import offense_defense
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(offense_defense))
