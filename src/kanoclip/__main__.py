"""`python -m kanoclip` (and `torchrun -m kanoclip train ...`) runs the command line."""

import sys

from kanoclip.cli import main

sys.exit(main())
