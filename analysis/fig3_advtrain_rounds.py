"""Figure 3: ASR against adversarial-training round, per size and evaluation attack.

    python analysis/fig3_advtrain_rounds.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import advtrain_rounds
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(advtrain_rounds))
