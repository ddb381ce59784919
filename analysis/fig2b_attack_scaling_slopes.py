"""Figure 2b: each size's attack-scaling slope against its parameter count.

    python analysis/fig2b_attack_scaling_slopes.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import attack_scaling_slopes
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(attack_scaling_slopes))
