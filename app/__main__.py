"""``python -m app`` is the ``doorway`` command."""

import sys

from app.cli import main

sys.exit(main())
