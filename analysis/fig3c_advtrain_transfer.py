"""Figure 3c: models trained against one attack, evaluated against another (give one file
per training attack to see several rows).

    python analysis/fig3c_advtrain_transfer.py results.h5 [more.h5 ...] --out figures/
"""

import sys

from hpcrobust.analysis import advtrain_transfer
from hpcrobust.analysis.report import script_main

if __name__ == "__main__":
    sys.exit(script_main(advtrain_transfer))
