"""`python -m omnitune`: the `omnitune` command (what `accelerate launch -m omnitune` runs)."""

import sys

from omnitune.core.cli import main

sys.exit(main())
