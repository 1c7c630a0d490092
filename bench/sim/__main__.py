"""``python -m bench.sim`` is ``cacheroute sim``."""

import sys

from bench.sim.cli import main

sys.exit(main())
