"""``python -m kf2v_tasks`` runs the ``kf2v`` command."""

import sys

from kf2v_tasks._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
