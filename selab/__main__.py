"""``python -m selab`` runs the ``selab`` command; ``torchrun --nproc_per_node N -m selab train ...`` trains in N processes."""

import sys

from selab.cli import main

if __name__ == "__main__":
    sys.exit(main())
