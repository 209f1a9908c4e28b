"""python -m gasca_core.evaluate: test-set report of a checkpoint.

The tool lives in gasca_core/cli/evaluate.py; this module keeps the command (and imports of
gasca_core.evaluate) working and hands over to it.
"""
import sys

from .cli.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
