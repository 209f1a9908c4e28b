"""python -m gasca_core.compare: GANGGLW vs joint vs plain greedy.

The tool lives in gasca_core/cli/compare.py; this module keeps the command (and imports of
gasca_core.compare) working and hands over to it.
"""
import sys

from .cli.compare import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
