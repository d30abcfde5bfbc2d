"""``python -m kf2v_tasks.simulator --port 8910 ...``."""

import sys

from kf2v_tasks.simulator.cli import main

sys.exit(main())
