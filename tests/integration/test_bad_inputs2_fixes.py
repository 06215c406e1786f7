"""Files a stranger or a broken disk brings, second pass (review bad_inputs2): each is left out, read as missing,
or refused in one line naming the file, never a traceback.

- Saved masks and finished runs' models whose paths are not UTF-8 text (a byte 0xff in a file name) are left out of
  the sidebar's lists and named, escaped, by ``selection.unlisted`` (Streamlit's widgets refused the name).
- JSON holding a lone surrogate escape (``"\\udcff"``, valid JSON) in a config.json, an adapter_config.json or a
  mask's provenance is refused naming the file and the key (pyarrow refused it in the Workspace table).
- A damaged demo-zoo manifest reads as no zoo, whatever the damage, and ``demo build`` writes it again.
- A JSONL line is read with a bound: a prompt file that is one huge line is refused holding about that bound.
- ``report`` of an analysis whose tensors.csv counts more changed entries than parameters (or fewer than 0).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from subnetviz.cli import main
from subnetviz.errors import CheckpointError, ConfigError, MaskError
from tests.unit.test_hub_inputs_review import CONFIG, SHAPES  # the one-layer Llama of 920 parameters

BAD = os.fsdecode(b"m\xff")  # a file name of a byte that is not UTF-8 (as Python gives it: 'm\udcff')


def _write(folder: Path, tensors: dict[str, np.ndarray], config: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))  # (ensure_ascii: a surrogate written as its escape)
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(base, finetune): the finetune differs in 3 planted entries of q_proj."""
    root = tmp_path_factory.mktemp("bad_inputs2")
    rng = np.random.default_rng(0)
    base = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    ft = {n: v.copy() for n, v in base.items()}
    ft["model.layers.0.self_attn.q_proj.weight"].reshape(-1)[[0, 9, 63]] += 0.5
    return _write(root / "base", base, CONFIG), _write(root / "ft", ft, CONFIG)


# --- 2. saved masks and run models whose names are not UTF-8 text ---------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    monkeypatch.delenv("SUBNETVIZ_ROOTS", raising=False)
    return tmp_path


def test_a_mask_or_run_named_in_other_bytes_is_left_out_of_the_lists_and_named_escaped(home):
    from subnetviz import selection

    uploads, zoo_masks = selection.uploads_dir(), home / "zoo" / "masks"
    zoo_masks.mkdir(parents=True)
    for folder in (uploads, zoo_masks):
        (folder / "ok-1a2b3c4d.safetensors").write_bytes(b"not read")
        (folder / f"{BAD}.safetensors").write_bytes(b"not read")
    outputs = home / "runs" / "r1" / "outputs"
    (outputs / "masks").mkdir(parents=True)
    (outputs / "masks" / f"{BAD}.safetensors").write_bytes(b"not read")
    (outputs / "masks" / "topk.safetensors").write_bytes(b"not read")
    for run in ("r2", f"r{BAD}"):  # finished runs' models, the second in a folder of other bytes
        (home / "runs" / run / "outputs" / "model").mkdir(parents=True)
        (home / "runs" / run / "outputs" / "model" / "config.json").write_text("{}")

    listed = selection.saved_masks()
    assert set(listed) == {"masks/ok-1a2b3c4d", "uploads/ok-1a2b3c4d", "run r1/masks/topk"}
    assert set(selection.zoo_members(None)) == {"run r2"}
    for text in [*listed, *listed.values(), *selection.zoo_members(None).values()]:
        text.encode("utf-8")  # every option a widget is given is UTF-8 text
    unlisted = selection.unlisted()
    assert sorted(unlisted) == sorted(
        [
            f"{home.name}/uploads/m\\xff.safetensors",
            f"{home.name}/zoo/masks/m\\xff.safetensors",
            f"{home.name}/runs/r1/outputs/masks/m\\xff.safetensors",
            f"{home.name}/runs/rm\\xff/outputs/model",
        ]
    ), unlisted
    for text in unlisted:
        text.encode("utf-8")


def test_a_mask_whose_provenance_holds_a_lone_surrogate_is_listed_by_its_file_name(home):
    """A bigram-mask job's label is made of its provenance (target, λ): one holding "\\udcff" was a label the
    sidebar's widget refused; its provenance is now refused (read as none), so the label is the path's."""
    from safetensors.numpy import save_file

    from subnetviz import selection

    mask = home / "runs" / "r1" / "outputs" / "mask.safetensors"
    mask.parent.mkdir(parents=True)
    meta = {"subnetviz": json.dumps({"target": "bigram\udcff", "lambda": 10})}  # (its escape, as JSON writes it)
    save_file({"w": np.ones(4, dtype=bool)}, str(mask), metadata=meta)
    assert list(selection.saved_masks()) == ["run r1/mask"]


# --- 3. JSON strings holding a lone surrogate ----------------------------------------------------------------------
def test_parse_json_refuses_a_lone_surrogate_naming_where_it_lies():
    from subnetviz.config import parse_json

    cases = {
        '{"architectures": ["Llama\\udcffForCausalLM"]}': r"value at \['architectures'\]\[0\] 'Llama\\udcffForCausalLM'",
        '{"a": {"b\\uDFFF": 1}}': r"key in \['a'\] 'b\\udfff'",
        '{"a": [{"x": "\\ud800"}]}': r"value at \['a'\]\[0\]\['x'\] '\\ud800'",
    }
    for raw, where in cases.items():
        for given in (raw, raw.encode()):
            with pytest.raises(MaskError, match=rf"^m\.json: {where} is not valid UTF-8 text") as err:
                parse_json(given, "m.json", MaskError, text=True)
            assert "\n" not in str(err.value)
            str(err.value).encode("utf-8")  # the message itself is text a page can show
    # a surrogate pair is one character written as two escapes (JSON's way for characters past U+FFFF): read
    assert parse_json('{"e": "\\ud83d\\ude00"}', "m.json", MaskError, text=True) == {"e": "\U0001f600"}
    assert parse_json('{"e": "\\udcff"}', "m.json", MaskError) == {"e": "\udcff"}  # (asked for no text check)


@pytest.mark.parametrize("key, value", [("architectures", ["Llama\udcffForCausalLM"]), ("model_type", "lla\udcffma")])
def test_a_config_json_string_with_a_lone_surrogate_is_refused_naming_the_file_and_key(
    pair, tmp_path, key, value, capsys
):
    from subnetviz.checkpoints import open_checkpoint

    ft = shutil.copytree(pair[1], tmp_path / "ft")
    cfg = json.loads((ft / "config.json").read_text())
    cfg[key] = value
    (ft / "config.json").write_text(json.dumps(cfg))
    assert "\\udcff" in (ft / "config.json").read_text()  # (written as the escape: valid JSON and UTF-8 bytes)
    with pytest.raises(CheckpointError, match=rf"config\.json in \S*ft: value at \['{key}'\]") as err:
        open_checkpoint(str(ft))
    assert "not valid UTF-8 text (a lone surrogate escape)" in str(err.value) and "\n" not in str(err.value)
    assert main(["analyze", str(pair[0]), str(ft), "--out", str(tmp_path / "o"), "--no-spectra", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "config.json in" in err[-1] and key in err[-1], err


def test_an_adapter_config_with_a_lone_surrogate_is_refused_naming_it(tmp_path):
    from subnetviz.checkpoints.adapters import adapter_info

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LO\udcffRA", "r": 4, "lora_alpha": 8}))
    with pytest.raises(CheckpointError, match=r"adapter_config\.json: value at \['peft_type'\] 'LO\\udcffRA' is not"):
        adapter_info(folder)


# --- 4. a damaged demo-zoo manifest ---------------------------------------------------------------------------------
def _zoo_of_links(micro_zoo, root: Path) -> Path:
    """A zoo folder whose entries link to the micro zoo's, with a manifest file of its own."""
    root.mkdir()
    for p in Path(micro_zoo.root).iterdir():
        if p.name != "manifest.json" and not p.name.startswith("."):
            (root / p.name).symlink_to(p, target_is_directory=p.is_dir())
    shutil.copyfile(Path(micro_zoo.root) / "manifest.json", root / "manifest.json")
    return root


def _retyped(raw: dict, edit) -> bytes:
    d = copy.deepcopy(raw)
    edit(d)
    return json.dumps(d).encode()


@pytest.mark.slow
def test_a_damaged_manifest_reads_as_no_zoo_whatever_the_damage(micro_zoo, tmp_path):
    from subnetviz.demo import load_zoo, zoo_is_built
    from subnetviz.demo.zoo import read_manifest

    root = _zoo_of_links(micro_zoo, tmp_path / "zoo")
    man = root / "manifest.json"
    good = man.read_bytes()
    assert zoo_is_built(root)  # (the links make a complete zoo)
    raw = json.loads(good)
    damages = {
        "a byte that is not UTF-8": good[:200] + b"\xff" + good[201:],
        "a lone surrogate escape": _retyped(raw, lambda d: d["members"][0].update(id="grpo\udcff")),
        "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
        "a number of 5000 digits": b'{"format": ' + b"1" * 5000 + b"}",
        "a member's path as a list": _retyped(raw, lambda d: d["members"][0].update(path=["a"])),
        "the bigram's path as a number": _retyped(raw, lambda d: d["bigram"].update(path=5)),
        "a mask's path as a list": _retyped(raw, lambda d: next(iter(d["masks"].values())).update(path=[1])),
        "extras' jobs as a string": _retyped(raw, lambda d: d.update(extras={"runs_root": "r", "jobs": "ab"})),
        "members as an object": _retyped(raw, lambda d: d.update(members={"a": 1})),
    }
    for what, data in damages.items():
        man.write_bytes(data)
        assert zoo_is_built(root) is False, what
        with pytest.raises(CheckpointError, match="no complete demo zoo there"):
            load_zoo(root)
    man.unlink()
    man.mkdir()  # a folder in its place
    assert read_manifest(root) is None and zoo_is_built(root) is False
    man.rmdir()
    os.mkfifo(man)  # a named pipe: never opened (it would wait for a writer for good)
    assert read_manifest(root) is None and zoo_is_built(root) is False


@pytest.mark.slow
def test_demo_build_writes_a_damaged_manifest_again(micro_zoo, tmp_path, capsys):
    from subnetviz.demo import zoo_is_built
    from subnetviz.demo.build import build_zoo

    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo.root, root)
    good = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_bytes((root / "manifest.json").read_bytes()[:100] + b"\xff\xfe")
    seen: list[str] = []
    zoo = build_zoo(root, preset="micro", extras=False, progress=lambda k, n, msg: seen.append(msg))
    ran = [m for m in seen if m.endswith("...")]
    assert ran and ran[-1].startswith("evaluating every member") and len(ran) == 1, seen  # only the manifest
    assert zoo_is_built(root) and zoo.manifest.fingerprint == good["fingerprint"]

    (root / "manifest.json").unlink()
    (root / "manifest.json").mkdir()  # an empty folder in its place: removed, the manifest written
    build_zoo(root, preset="micro", extras=False)
    assert (root / "manifest.json").is_file() and zoo_is_built(root)

    (root / "manifest.json").unlink()
    (root / "manifest.json").mkdir()
    (root / "manifest.json" / "notes.txt").write_text("someone's")  # a folder holding files: not the build's
    assert main(["demo", "build", "--preset", "micro", "--root", str(root), "--no-extras"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "manifest.json: a folder holding files" in err and "remove it" in err, err
    assert (root / "manifest.json" / "notes.txt").read_text() == "someone's"


# --- 8. a JSONL line read with a bound -----------------------------------------------------------------------------
def test_a_jsonl_line_longer_than_the_bound_is_refused_naming_the_file_and_line(tmp_path, monkeypatch):
    from subnetviz.analysis.behavior_data import read_prompts
    from subnetviz.training import data

    monkeypatch.setattr(data, "MAX_LINE_BYTES", 64)
    row = b'{"prompt": "' + b"a" * (64 - 15) + b'"}\n'  # 64 bytes with its line end: at the bound, read
    assert len(row) == 64
    path = tmp_path / "p.jsonl"
    path.write_bytes(row + b'{"prompt": "x"}\n' + b'{"prompt": "' + b"b" * 200 + b'"}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 3: longer than 64 bytes") as err:
        read_prompts(path)
    assert "\n" not in str(err.value)
    path.write_bytes(row + b'{"prompt": "x"}')  # the last line without its end: read
    assert [p.text for p in read_prompts(path)] == ["a" * 49, "x"]
    path.write_bytes(row + b"c" * 65)  # 65 bytes and no end: past the bound
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 2: longer than 64 bytes"):
        read_prompts(path)
    path.write_bytes(b"c" * 65)
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 1: longer than 64 bytes"):
        data.read_jsonl(path, "eval")  # (training's reader: the same lines)


def test_a_prompt_file_of_one_huge_line_is_refused_holding_about_the_bound(tmp_path, monkeypatch):
    """A 48 MiB file of one line was read, decoded and parsed whole before the prompt's length was checked (a
    200 MiB one grew the process by 468 MiB, a file of tens of GB was an OOM kill): peak memory measured."""
    from subnetviz.analysis.behavior_data import read_prompts
    from subnetviz.training import data

    monkeypatch.setattr(data, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"prompt": "')
        for _ in range(48):
            fh.write(b"a" * (1 << 20))
        fh.write(b'"}')
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"big\.jsonl, line 1: longer than 1,048,576 bytes"):
            read_prompts(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes allocated"


# --- N2. counts of changed entries outside [0, numel] in tensors.csv -------------------------------------------------
@pytest.fixture(scope="module")
def analysis(pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis2") / "out"
    assert main(["analyze", *map(str, pair), "--out", str(out), "--no-spectra", "--subspaces", "0", "--no-cache"]) == 0
    return out


@pytest.mark.parametrize("column, value", [("changed", -5), ("changed", 10**6), ("changed@1e-08", 10**6)])
def test_report_refuses_changed_counts_outside_zero_and_numel(analysis, tmp_path, capsys, column, value):
    import pandas as pd

    folder = shutil.copytree(analysis, tmp_path / "an")
    (folder / ".manifest.json").unlink(missing_ok=True)  # a stranger's folder: nothing tells an edit by
    t = pd.read_csv(folder / "tensors.csv", keep_default_na=False)
    assert column in t.columns
    row = int(np.flatnonzero(t["key"] == "layers.0.mlp.up_proj.weight")[0])
    numel = int(t.loc[row, "numel"])  # 16 x 8 (SHAPES): the message's number, checked against the shape
    assert numel == int(np.prod(SHAPES["model.layers.0.mlp.up_proj.weight"]))
    t.loc[row, column] = value
    t.to_csv(folder / "tensors.csv", index=False)
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {folder / 'tensors.csv'}: {column} = {value:,} for 'layers.0.mlp.up_proj.weight'")
    assert f"which has {numel:,} parameters" in err, err
    assert not (tmp_path / "r.html").exists()


def test_report_still_reads_counts_at_their_bounds(analysis, tmp_path):
    """0 and numel are counts a tensor can have (none changed, all changed): read."""
    import pandas as pd

    from subnetviz.analysis.updates import read_analysis

    folder = shutil.copytree(analysis, tmp_path / "an")
    (folder / ".manifest.json").unlink(missing_ok=True)
    t = pd.read_csv(folder / "tensors.csv", keep_default_na=False)
    t["changed"] = t["numel"]
    t.to_csv(folder / "tensors.csv", index=False)
    back = read_analysis(folder)
    assert int(back.reports[0].tensors["changed"].sum()) == int(t["numel"].sum())


def test_a_folder_in_place_of_config_json_is_refused_in_one_line(tmp_path, capsys):
    """A ``config.json`` that is a folder was read as no config at all, unsaid (the naming then came from the
    tensor names alone); it is refused as the weight files' readers refuse one, by the CLI in one line."""
    from subnetviz.checkpoints import open_checkpoint
    from tests.models import make_llama

    base = make_llama(tmp_path / "base")
    ft = tmp_path / "ft"
    shutil.copytree(base, ft)
    (ft / "config.json").unlink()
    (ft / "config.json").mkdir()
    from subnetviz.errors import SubnetvizError

    with pytest.raises(SubnetvizError, match=r"config\.json in .*ft: a folder, not a regular file"):
        open_checkpoint(str(ft))
    assert main(["analyze", str(base), str(ft), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: config.json in ") and "a folder, not a regular file" in err[-1]
    assert not (tmp_path / "out").exists()


def test_a_lone_surrogate_in_a_masks_provenance_is_not_carried_on(tmp_path):
    """The provenance JSON inside a mask file's header is text in the header (valid UTF-8) that parses into a lone
    surrogate (``"\\udcff"``): it was carried into the mask's metadata, where a table of masks could not encode it;
    the provenance is dropped as any unreadable provenance is, the masks read."""
    import torch
    from safetensors.torch import save_file

    from subnetviz.masks import load_mask_set

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 3, dtype=torch.bool)}, str(path), metadata={"subnetviz": '{"method": "x\\udcff"}'})
    ms = load_mask_set(path)
    assert int(ms.masks["w"].sum()) == 6
    assert all(str(v).encode("utf-8") for v in ms.metadata.values())
    assert "x\udcff" not in ms.metadata.values()
