"""``python -m streams.cli``: the ``recostream`` command."""

import sys

from streams.cli import main

sys.exit(main())
