"""Figure 6: cross-size transfer matrix (source size x target size), round 0 and the last round.

    python analysis/fig6_transfer_matrix.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import transfer_heatmap
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(transfer_heatmap))
