"""Figure 3b: ASR against cumulative defense FLOPs (rounds >= 1), per size and evaluation attack.

    python analysis/fig3b_advtrain_defense_flops.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import advtrain_defense
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(advtrain_defense))
