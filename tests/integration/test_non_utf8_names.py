"""Folders and files whose names are not UTF-8 text, and adapters whose config gives another rank than their tensors.

A name with a byte that is not UTF-8 (``ft\\xff``, made on a Latin-1 system) reaches Python as a lone surrogate
escape (``'ft\\udcff'``). Proves: such a base or finetune is analysed (its fingerprint taken over the path's
bytes, two such names told apart), its label written with the byte escaped (``ft\\xff``) in every table, JSON and
Parquet file and in its mask's file name; ``analyze --out`` into such a folder writes the result or refuses in one
line; masks (``.pt`` and safetensors, a bf16 one too) and legacy ``pytorch_model.bin`` checkpoints there are read;
an adapter there is merged. Before, each ended in a UnicodeEncodeError traceback, and ``mask import`` of a ``.pt``
said "'str' object has no attribute 'tell'".

And: an adapter whose adapter_config.json says ``r`` (or a ``rank_pattern`` entry) other than its tensors' rank is
refused in one line naming the file, the module, the tensor and both ranks, as PEFT refuses to load it. Before, it
was merged with α over the tensors' rank under a note stating α/r of the config's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.models import make_llama

REPO = Path(__file__).resolve().parents[2]
PLANTED = "model.layers.0.mlp.up_proj.weight"


def _named(parent: Path, raw: bytes) -> Path:
    """``parent``/``raw``: a name of the file system's bytes, as Python sees it (a lone surrogate escape)."""
    return parent / os.fsdecode(raw)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Llama ``base`` and a finetune of it with 10 entries of one tensor moved, each also copied into a
    folder named with a byte that is not UTF-8: ``base\\xfe``, ``ft\\xff`` and (the same files again) ``ft\\xfe``.
    The expected changed counts are the entries whose bits differ, from the two files as safetensors reads them."""
    root = tmp_path_factory.mktemp("non_utf8")
    base, ft = make_llama(root / "base", seed=0), make_llama(root / "ft", seed=0)
    sd = load_file(str(ft / "model.safetensors"))
    sd[PLANTED] = sd[PLANTED].clone()
    sd[PLANTED].view(-1)[:10] += 1
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    copies = {}
    for raw, src in ((b"base\xfe", base), (b"ft\xff", ft), (b"ft\xfe", ft)):
        copies[raw] = _named(root, raw)
        shutil.copytree(src, copies[raw])
    a, b = load_file(str(base / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    changed = {n: int((_bits(a[n]) != _bits(b[n])).sum()) for n in a}
    return {"root": root, "base": base, "ft": ft, "copies": copies, "changed": changed}


def _run(args, home: Path) -> subprocess.CompletedProcess:
    """``python -m subnetviz ARGS``, each argument passed as the file system's bytes."""
    env = {**os.environ, "SUBNETVIZ_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "subnetviz", *(os.fsencode(str(a)) for a in args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    )


def test_labels_escape_the_bytes_that_are_not_utf8():
    from subnetviz.checkpoints.sources import checkpoint_label

    assert checkpoint_label(os.fsdecode(b"/data/ft\xff")) == "ft\\xff"
    assert checkpoint_label(os.fsdecode(b"/data/d\xe9j\xe0/model.safetensors")) == "d\\xe9j\\xe0"
    assert checkpoint_label(os.fsdecode(b"/data/run\xff.safetensors")) == "run\\xff"
    assert checkpoint_label("/data/déjà") == "déjà"  # (UTF-8 text as it is)


def test_fingerprints_are_taken_over_the_paths_bytes(pair):
    """Two copies of one finetune in ``ft\\xff`` and ``ft\\xfe`` have fingerprints, and different ones: the
    path's own bytes are hashed (a replacement character for each would make the two one)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.sources import fingerprint

    ff, fe = pair["copies"][b"ft\xff"], pair["copies"][b"ft\xfe"]
    assert open_checkpoint(ff).fingerprint == fingerprint(ff)
    assert len({fingerprint(ff), fingerprint(fe), fingerprint(pair["ft"])}) == 3


def test_analysis_of_a_finetune_in_such_a_folder_writes_its_escaped_label_everywhere(pair, tmp_path):
    """The library's pass (no cache) on ``base\\xfe`` and ``ft\\xff``: the planted counts, the label ``ft\\xff`` in
    the tables, the base and paths escaped; written (spectra's sigma.parquet too) and read back."""
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates, read_analysis, write_analysis
    from subnetviz.masks import load_mask_set

    base, ft = pair["copies"][b"base\xfe"], pair["copies"][b"ft\xff"]
    a = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=True, baseline=False))
    assert a.labels == ["ft\\xff"]
    rep = a.reports[0]
    assert {n: int(c) for n, c in rep.tensors.set_index("name")["changed"].items()} == pair["changed"]
    assert a.base == str(base).replace("\udcfe", "\\xfe")
    assert a.paths[""].endswith("/base\\xfe") and a.paths["ft\\xff"].endswith("/ft\\xff")
    out = write_analysis(a, tmp_path / "out", params={"finetuned": [str(ft)]})
    assert set(pd.read_csv(out / "tensors.csv")["model"]) == {"ft\\xff"}
    assert set(pd.read_parquet(out / "sigma.parquet")["model"]) == {"ft\\xff"}
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["labels"] == ["ft\\xff"] and summary["mask_files"] == {"ft\\xff": "masks/ft_xff.safetensors"}
    assert summary["params"]["finetuned"][0].endswith("/ft\\xff")
    text = (out / "summary.json").read_text(encoding="utf-8")
    assert "\\udc" not in text  # (no lone surrogate left for a JSON reader to refuse)
    masks = load_mask_set(out / "masks" / "ft_xff.safetensors")
    assert masks.metadata["model"] == "ft\\xff" and masks.metadata["model_path"].endswith("/ft\\xff")
    assert {n: int(m.sum()) for n, m in masks.masks.items()} == pair["changed"]
    back = read_analysis(out)
    assert back.labels == ["ft\\xff"] and back.report("ft\\xff").tensors["changed"].sum() == 10


@pytest.mark.slow
def test_cli_analyzes_such_folders_and_writes_into_one(pair):
    """``analyze base\\xfe ft\\xff`` (through the cache, and with --no-cache) prints the label escaped; ``--out``
    named ``out\\xff`` is written (without the cache, so every file is written there; without subspaces, whose
    Parquet writer is the CLI's own), and with subspaces it is written or refused in one line, never a traceback."""
    root, home = pair["root"], pair["root"] / "home"
    base, ft = pair["copies"][b"base\xfe"], pair["copies"][b"ft\xff"]
    for extra in ([], ["--no-cache"]):
        out = root / f"out{len(extra)}"
        p = _run(["analyze", base, ft, "--out", out, "--subspaces", "0", *extra], home)
        assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
        assert b"ft\\xff" in p.stdout and b"Traceback" not in p.stderr
        assert set(pd.read_csv(out / "tensors.csv")["model"]) == {"ft\\xff"}
        assert int(pd.read_csv(out / "tensors.csv")["changed"].sum()) == 10
    odd = _named(root, b"out\xff")
    p = _run(
        ["analyze", pair["base"], pair["ft"], "--out", odd, "--subspaces", "0", "--no-cache"], home
    )  # (written there)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    with open(odd / "sigma.parquet", "rb") as fh:  # (pyarrow takes a path only as UTF-8 text)
        assert set(pd.read_parquet(fh)["model"]) == {"ft"}
    odd2 = _named(root, b"sub\xff")
    p = _run(["analyze", pair["base"], pair["ft"], "--out", odd2], home)  # with the subspaces' Parquet too
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    with open(odd2 / "subspaces.parquet", "rb") as fh:
        assert len(pd.read_parquet(fh)) > 0
    html = root / "report.html"
    p = _run(["report", odd2, "--out", html], home)  # the dashboard names the folder, escaped
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    assert "sub\\xff" in html.read_text(encoding="utf-8")
    missing = os.path.join(os.fsdecode(root), os.fsdecode(b"gone\xff"))
    p = _run(["analyze", pair["base"], missing, "--out", root / "none"], home)  # the error names it as shown above
    assert p.returncode == 2 and b"gone\\xff" in p.stderr and b"\\udcff" not in p.stderr, p.stderr[-2000:]


def test_masks_in_such_a_folder_are_read(tmp_path):
    """A torch.save mask and safetensors masks (bit-packed, and a plain bf16 0/1 one: read through torch) in
    ``dir\\xff`` are read with their values; before, a .pt said "'str' object has no attribute 'tell'" and a
    safetensors mask "Path … is not valid UTF-8"."""
    from subnetviz.masks import (
        MaskSet,
        import_torch_masks,
        load_mask_set,
        load_mask_tensor,
        mask_file_shapes,
        packed_bytes,
        save_mask_set,
    )

    folder = _named(tmp_path, b"dir\xff")
    folder.mkdir()
    want = torch.zeros(6, 5, dtype=torch.bool)
    want[1, 2] = want[4, 0] = want[5, 4] = True
    torch.save({"w": want.clone()}, folder / "m.pt")
    got = import_torch_masks(folder / "m.pt")
    assert torch.equal(got.masks["w"], want)
    save_mask_set(folder / "packed.safetensors", MaskSet({"w": want}, {"source": str(folder)}))
    save_file({"w": want.to(torch.bfloat16)}, str(folder / "bf16.safetensors"))
    for name in ("packed.safetensors", "bf16.safetensors"):
        path = folder / name
        assert torch.equal(load_mask_set(path).masks["w"], want), name
        assert torch.equal(load_mask_set(path, packed=True).masks["w"], want), name
        assert mask_file_shapes(path) == {"w": (6, 5)} and packed_bytes(path) > 0, name
    assert torch.equal(load_mask_tensor(folder / "packed.safetensors", "w"), want)  # (read through NumPy)
    assert load_mask_set(folder / "packed.safetensors").metadata["source"].endswith("/dir\\xff")


def test_a_legacy_checkpoint_in_such_a_folder_is_read(pair, tmp_path):
    """``pytorch_model.bin`` in ``ft\\xff`` (torch's zip reader and its mmap take only UTF-8 names): its tensors as
    torch.load gives them."""
    from subnetviz.checkpoints import open_checkpoint

    sd = load_file(str(pair["ft"] / "model.safetensors"))
    folder = _named(tmp_path, b"legacy\xff")
    folder.mkdir()
    shutil.copy(pair["ft"] / "config.json", folder / "config.json")
    torch.save(sd, folder / "pytorch_model.bin")
    ck = open_checkpoint(folder)
    assert set(ck.names) == set(sd)
    assert all(torch.equal(_bits(ck.get(n)), _bits(sd[n])) for n in sd)
    assert ck.fingerprint


# --- an adapter whose config gives another rank than its tensors -------------------------------------------------

Q, V = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"


def _adapter(folder: Path, base: Path, ranks: dict[str, int], config: dict) -> dict[str, torch.Tensor]:
    """A LoRA adapter on ``base`` (A (r, in), B (out, r) per module of ``ranks``) with ``config`` as
    adapter_config.json (beside r=4, lora_alpha=16)."""
    sd = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for module, r in ranks.items():
        out_f, in_f = sd[f"{module}.weight"].shape
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_f, generator=gen) * 0.1
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_f, r, generator=gen) * 0.1
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]} | config
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


@pytest.mark.parametrize(
    "ranks, config, said",
    [
        ({Q: 4, V: 4}, {"r": 16}, rf"r = 16 for '{Q}', but its LoRA tensor 'base_model\.model\.{Q}\.lora_A\.weight' "),
        ({Q: 4, V: 4}, {"rank_pattern": {"v_proj": 2}}, rf"rank_pattern\['v_proj'\] = 2 for '{V}', but its LoRA"),
        ({Q: 2, V: 4}, {"rank_pattern": {"q_proj": 2, "v_proj": 8}}, rf"rank_pattern\['v_proj'\] = 8 for '{V}'"),
    ],
    ids=["r", "rank_pattern", "one-pattern-of-two"],
)
def test_an_adapter_whose_config_rank_is_not_its_tensors_is_refused(pair, tmp_path, ranks, config, said):
    """Refused in one line naming the config file, the module, the tensor and both ranks; PEFT refuses to load the
    same folder (a size mismatch). Before, it was merged with α over the tensors' rank (4× PEFT's Δ for r=16)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.errors import CheckpointError

    folder = tmp_path / "lying"
    _adapter(folder, pair["base"], ranks, config)
    with pytest.raises(CheckpointError, match=said) as err:
        open_finetune(str(folder), open_checkpoint(pair["base"]))
    message = str(err.value)
    assert "\n" not in message and str(folder / "adapter_config.json") in message and "PEFT refuses" in message
    model = AutoModelForCausalLM.from_pretrained(str(pair["base"]), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(model, str(folder))


def test_an_adapter_whose_ranks_agree_is_merged_at_each_modules_scale(pair, tmp_path):
    """The config's ranks agreeing with the tensors (q_proj by rank_pattern at 2, v_proj at r=4): merged, each Δ
    α/r·B·A of its own rank against float64, within the bf16 rounding of the merged weight."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    folder = _named(tmp_path, b"ok\xff")  # (in a folder whose name is not UTF-8: its fingerprint too)
    tensors = _adapter(folder, pair["base"], {Q: 2, V: 4}, {"rank_pattern": {"q_proj": 2}})
    base = load_file(str(pair["base"] / "model.safetensors"))
    ck = open_finetune(str(folder), open_checkpoint(pair["base"]))
    assert ck.fingerprint
    for module, scale in ((Q, 16 / 2), (V, 16 / 4)):
        a = tensors[f"base_model.model.{module}.lora_A.weight"].double()
        b = tensors[f"base_model.model.{module}.lora_B.weight"].double()
        want = base[f"{module}.weight"].double() + scale * (b @ a)
        assert torch.allclose(ck.get(f"{module}.weight").double(), want, rtol=2**-8, atol=1e-6), module
