"""``python -m ddpm_course``: see :mod:`ddpm_course.cli`."""

import sys

from .cli import main

sys.exit(main())
