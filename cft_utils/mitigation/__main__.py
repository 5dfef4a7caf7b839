"""``python -m cft_utils.mitigation``: the command line of :mod:`cft_utils.mitigation.cli`."""

import sys

from .cli import main

sys.exit(main())
