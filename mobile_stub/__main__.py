"""``python -m mobile_stub``: the sigil-phone command."""

import sys

from .cli import main

sys.exit(main())
