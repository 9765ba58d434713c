"""``python -m tokenskip.cli`` (e.g. under ``accelerate launch -m tokenskip.cli train ...``)."""

import sys

from tokenskip.cli import main

sys.exit(main())
