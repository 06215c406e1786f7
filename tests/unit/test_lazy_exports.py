"""``subnetviz.checkpoints.align`` is a function named like the module defining it. After a direct import of the
submodule (``from subnetviz.checkpoints.align import ...``, which the Overlap page's module makes),
``from subnetviz.checkpoints import align`` read the module, and the next page or run that called it failed with
"'module' object is not callable" (found as a test-order failure: a micro zoo built after an Overlap test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIRSTS = [
    "import subnetviz.analysis.overlap",
    "from subnetviz.checkpoints.align import AlignedTensor",
    "import subnetviz.checkpoints.align",
    "from subnetviz.checkpoints import read_aligned",
    "from subnetviz.checkpoints import align",
]


@pytest.mark.parametrize("first", FIRSTS)
def test_align_is_the_function_whatever_was_imported_first(first):
    code = "\n".join(
        [
            first,
            "import types, subnetviz.checkpoints as pkg",
            "from subnetviz.checkpoints import align",  # (alone: a name beside it looked up first rebinds it)
            "from subnetviz.checkpoints.align import align as defined, AlignedTensor",
            "assert isinstance(align, types.FunctionType) and align is defined, type(align)",
            "from subnetviz.checkpoints import read_aligned",
            "assert pkg.align is defined and callable(read_aligned)",
            "import sys; assert isinstance(sys.modules['subnetviz.checkpoints.align'], types.ModuleType)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
