"""``python -m nlls``: the same as the ``nlls`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
