"""What a page needs only a cache key or a saved table for opens without importing torch (its import
is most of a fresh server's first open: 2 s idle, 5 s and more on a loaded machine). Checked in a
child process, whose ``sys.modules`` starts clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]


def _model(folder: Path, seed: int, sharded: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((8, 4)).astype(np.float32) for i in range(2)}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if not sharded:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    for i, (name, t) in enumerate(tensors.items()):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({name: t}, str(folder / shard))
        weight_map[name] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def _child(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_fingerprint_without_torch_equals_the_checkpoints(tmp_path):
    from subnetviz.checkpoints import open_checkpoint

    paths = [_model(tmp_path / "one", 0), _model(tmp_path / "sharded", 1, sharded=True)]
    paths.append(paths[0] / "model.safetensors")  # a single file
    got = _child(
        "import json, sys\nfrom subnetviz.checkpoints.sources import fingerprint\n"
        f"fps = [fingerprint(p) for p in {[str(p) for p in paths]!r}]\n"
        "print(json.dumps({'fps': fps, 'torch': 'torch' in sys.modules}))"
    )
    assert got["torch"] is False
    assert got["fps"] == [open_checkpoint(p).fingerprint for p in paths]
    assert len(set(got["fps"][:2])) == 2


def test_a_cached_run_comparison_is_read_back_without_torch(tmp_path):
    from subnetviz.demo.comparison import cached_compare_runs

    base, full, sub = (_model(tmp_path / n, s) for n, s in (("base", 0), ("full", 1), ("sub", 2)))
    cache = tmp_path / "cache"
    first = cached_compare_runs(full, sub, base, cache_root=cache)  # computes (torch) and publishes
    got = _child(
        "import json, sys\nfrom subnetviz.demo.comparison import cached_compare_runs\n"
        f"r = cached_compare_runs({str(full)!r}, {str(sub)!r}, {str(base)!r}, cache_root={str(cache)!r})\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'share': r.share_identical,\n"
        "                  'hist': r.ulp_histogram['count'].tolist(), 'vs_base': r.vs_base.to_dict('list')}))"
    )
    assert got["torch"] is False
    assert got["share"] == first.share_identical
    assert got["hist"] == first.ulp_histogram["count"].tolist()
    pd.testing.assert_frame_equal(pd.DataFrame(got["vs_base"]), first.vs_base, check_dtype=False)


def test_server_warm_up_imports_the_page_modules_without_torch():
    """``make app``'s launcher (subnetviz.serve) imports what every page's first run needs before the
    server answers: all of it imports, and none of it pulls in torch (a server that shows cached results
    never needs it); a module that does not exist is reported, not raised."""
    got = _child(
        "import json, sys; from streamlit.web import cli; from subnetviz.serve import WARM, warm; "
        "failed = warm(); missing = warm(('json', 'subnetviz_no_such_module')); "
        "print(json.dumps({'failed': failed, 'missing': missing, 'torch': 'torch' in sys.modules, "
        "'warmed': all(m in sys.modules for m in WARM)}))"
    )
    assert got == {"failed": [], "missing": ["subnetviz_no_such_module"], "torch": False, "warmed": True}


def test_a_lazy_name_like_its_module_is_the_function_whatever_was_looked_up_first():
    """``checkpoints.align`` is a function in a module of the same name: looking up ``read_aligned`` first
    imports that module, which binds the package's ``align`` to the module; the lazy exports bind every name
    of a module at its first import, so ``align`` is the function in any order (in a fresh interpreter)."""
    code = (
        "import types\n"
        "from subnetviz.checkpoints import read_aligned\n"
        "from subnetviz.checkpoints import align\n"
        "assert callable(align), align\n"  # (the module, callable as its function: lazy.CallableModule)
        "import subnetviz.checkpoints as c\n"
        "assert c.align is align and c.Alignment.__module__ == 'subnetviz.checkpoints.align'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
