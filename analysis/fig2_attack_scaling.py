"""Figure 2: logit10 of the Laplace-smoothed ASR against attack FLOPs, absolute and as a
fraction of pretraining compute, one line per size, with each size's OLS slope and R².

    python analysis/fig2_attack_scaling.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import attack_scaling
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(attack_scaling))
