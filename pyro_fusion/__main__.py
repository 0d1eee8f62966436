"""``python -m pyro_fusion``: the same as the ``pyro-fusion`` console script."""
import sys

from .cli import main

sys.exit(main())
