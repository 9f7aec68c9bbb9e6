"""``python -m deqir_jax.cli``: the ``deqir`` command."""

import sys

from . import main

sys.exit(main())
