"""python -m gasca_core.classify: the encoder as pre-training for classification.

The tool lives in gasca_core/cli/classify.py; this module keeps the command (and imports of
gasca_core.classify) working and hands over to it.
"""
import sys

from .cli.classify import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
