"""``python -m host_driver.cli``: the ``sez`` command."""

import sys

from . import main

sys.exit(main())
