"""``python -m subnetviz`` and the ``subnetviz`` console script: the command line of :mod:`subnetviz.cli`."""

from __future__ import annotations

import sys

from subnetviz.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
