"""Figure 1: ASR against model size, per task and attack (median with min-max over seeds,
or a Wilson 95% interval for one seed), with accuracy before and after the attack.

    python analysis/fig1_asr_vs_size.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import asr_vs_size
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(asr_vs_size))
