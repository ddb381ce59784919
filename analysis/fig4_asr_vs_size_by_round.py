"""Figure 4: ASR against model size, one line per adversarial-training round.

    python analysis/fig4_asr_vs_size_by_round.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import asr_vs_size_by_round
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(asr_vs_size_by_round))
