"""`python -m serving.models`: see serving/models/cli.py."""

import sys

from serving.models.cli import main

sys.exit(main())
