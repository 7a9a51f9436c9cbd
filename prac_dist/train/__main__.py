"""`python -m prac_dist.train ...` is `prac-train ...` (the form launchers such as `deepspeed -m` use)."""

import sys

from prac_dist.train.cli import main

sys.exit(main())
