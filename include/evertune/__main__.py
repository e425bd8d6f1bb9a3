"""``python -m evertune`` runs the CLI."""

import sys

from evertune.cli import main

sys.exit(main())
