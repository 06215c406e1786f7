"""``subnetviz.checkpoints.align`` is a function named like the module defining it. After a direct import of the
submodule (``from subnetviz.checkpoints.align import ...``, which the Overlap page's module makes),
``from subnetviz.checkpoints import align`` read the module, and the next page or run that called it failed with
"'module' object is not callable" (found as a test-order failure: a micro zoo built after an Overlap test). The
module is callable as the function now, and stays a module for ``import ... as m`` and string monkeypatches."""

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
def test_align_is_called_as_the_function_whatever_was_imported_first(first):
    code = "\n".join(
        [
            first,
            "from subnetviz.checkpoints import align",  # (alone: a name beside it looked up first rebinds it)
            "from subnetviz.checkpoints.align import align as defined",
            "from subnetviz.errors import AlignmentError",
            "def err(f):",
            "    try:",
            "        f([])",
            "    except Exception as exc:",
            "        return type(exc), str(exc)",
            "got, want = err(align), err(defined)",
            "assert want is not None and got == want, (got, want)",  # (the same call, the same refusal)
            "import subnetviz.checkpoints.align as m",
            "assert m.read_aligned and m.AlignedTensor and m.align is defined",  # a module's attributes
            "from subnetviz.checkpoints import read_aligned; assert callable(read_aligned)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_string_monkeypatch_of_the_module_reaches_it(monkeypatch):
    import subnetviz.checkpoints.align as module

    monkeypatch.setattr("subnetviz.checkpoints.align.read_aligned", lambda *a: "patched")
    assert module.read_aligned() == "patched"
