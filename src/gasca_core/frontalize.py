"""python -m gasca_core.frontalize: apply a trained G to your own images.

The tool lives in gasca_core/cli/frontalize.py; this module keeps the command (and imports of
gasca_core.frontalize) working and hands over to it.
"""
import sys

from .cli.frontalize import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
