"""``python -m bbverify``: the same as the ``bbverify`` command."""

import sys

from .cli import main

sys.exit(main())
