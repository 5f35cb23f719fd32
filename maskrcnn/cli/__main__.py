"""``python -m maskrcnn.cli`` (and ``torchrun -m maskrcnn.cli``) runs the command line."""

import sys

from maskrcnn.cli import main

sys.exit(main())
