"""python -m gasca_core.train: train a GASCA model.

The tool lives in gasca_core/cli/train.py; this module keeps the command (and imports of
gasca_core.train) working and hands over to it.
"""
import sys

from .cli.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
