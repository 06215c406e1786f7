"""Files a stranger or a broken disk brings, in the app (AppTest; review bad_inputs2): each page still opens with
no bug notice, and what is left out is said in one line.

- A saved mask whose file name is not UTF-8 text (a byte 0xff) put "This is a bug" in every page's sidebar (the
  Saved masks widget refused the name): it is left out of the list and named, escaped, on the Workspace page.
- A finetune whose config.json holds a lone surrogate escape in ``architectures`` (valid JSON) was the bug notice
  on Workspace (its checkpoints table): now one line naming config.json and the key.
- A damaged demo-zoo manifest (a byte that is not UTF-8, a folder in its place) was the bug notice twice on every
  page: now the zoo reads as not built, as a missing manifest does.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.app_fixtures import app_roots, home_of_its_own, open_page, pointed_at

pytestmark = pytest.mark.slow

BAD = os.fsdecode(b"m\xff")  # as Python gives the file name m<0xff>: 'm\udcff'


def _texts(at, *kinds) -> list[str]:
    return [str(e.value).replace("\\", "") for kind in kinds for e in getattr(at, kind)]


def _no_bug(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not [t for t in _texts(at, "error") if "This is a bug" in t]
    return at


def test_a_saved_mask_named_in_other_bytes_is_left_out_and_named_on_workspace(micro_zoo, tmp_path_factory):
    with home_of_its_own(micro_zoo, tmp_path_factory, "bad-inputs2-masks") as home:
        uploads = home / "uploads"
        uploads.mkdir(exist_ok=True)
        shutil.copyfile(micro_zoo.mask_path(), uploads / f"{BAD}.safetensors")  # a valid mask; only its name is odd
        said = {}
        for page in ("workspace", "overlap"):
            at = _no_bug(open_page(page))
            assert not at.error, [e.value for e in at.error]
            (saved,) = [m for m in at.multiselect if m.label == "Saved masks"]
            assert "masks/grpo-seed0" in saved.options and not [o for o in saved.options if "m\udcff" in o]
            said[page] = [t for t in _texts(at, "warning") if "not UTF-8 text" in t]
        assert len(said["workspace"]) == 1 and not said["overlap"], said  # once, where masks are added and counted
        assert "uploads/mxff.safetensors" in said["workspace"][0], said  # (m\xff: its backslash removed by _texts)
        assert str(home) not in said["workspace"][0]  # (a path as the pages show paths)


def test_a_config_json_with_a_lone_surrogate_is_one_line_on_workspace(micro_zoo, tmp_path_factory):
    with home_of_its_own(micro_zoo, tmp_path_factory, "bad-inputs2-config") as home:
        ft = shutil.copytree(micro_zoo.member_path("grpo-s0"), home / "arch")
        cfg = json.loads((ft / "config.json").read_text())
        cfg["architectures"] = ["Llama\udcffForCausalLM"]
        (ft / "config.json").write_text(json.dumps(cfg))  # written as the escape "\udcff": valid JSON
        at = _no_bug(open_page("workspace", ft=[str(ft)]))
        said = [t for t in _texts(at, "error") if "config.json in" in t]
        assert len(said) == 1 and "architectures" in said[0] and "not valid UTF-8 text" in said[0], said
        assert "\n" not in said[0]
        assert all(m.label != "arch" for m in at.metric)  # (left out; the default finetunes still compared)


@contextlib.contextmanager
def _home_with_zoo_of_its_own(micro_zoo, tmp_path_factory, name: str):
    """A home whose zoo folder is its own (its entries links to the micro zoo's, its manifest a copy), so the
    manifest can be damaged without touching the micro zoo other tests read."""
    home = tmp_path_factory.mktemp(name).resolve()
    zoo = home / "zoo"
    zoo.mkdir()
    for p in Path(micro_zoo.root).iterdir():
        if p.name != "manifest.json" and not p.name.startswith("."):
            (zoo / p.name).symlink_to(p.resolve(), target_is_directory=p.is_dir())
    shutil.copyfile(Path(micro_zoo.root) / "manifest.json", zoo / "manifest.json")
    with pointed_at(home, os.pathsep.join([app_roots(home), str(Path(micro_zoo.root).resolve())])):
        yield home


@pytest.mark.parametrize("damage", ["byte", "folder"])
def test_a_damaged_zoo_manifest_reads_as_a_zoo_not_built(micro_zoo, tmp_path_factory, damage):
    with _home_with_zoo_of_its_own(micro_zoo, tmp_path_factory, f"bad-inputs2-manifest-{damage}") as home:
        man = home / "zoo" / "manifest.json"
        assert "Demo zoo manifest" in [s.value for s in _no_bug(open_page("workspace")).subheader]  # (read first)
        if damage == "byte":
            raw = man.read_bytes()
            man.write_bytes(raw[:200] + b"\xff\xfe" + raw[202:])
        else:
            man.unlink()
            man.mkdir()
        for page in ("home", "workspace"):
            at = _no_bug(open_page(page))
            assert not at.error, [e.value for e in at.error]
            assert [t for t in _texts(at, "warning") if "The demo zoo is not built yet" in t], page
