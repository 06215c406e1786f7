"""The Workspace page (AppTest) on hub inputs (review "hub inputs") and after a config.json edit (review "cache
keys", defect 1): a LoRA adapter given by its hub id is merged (it was listed as a model and its alignment error
removed every finetune's result); a ``.safetensors`` file or index json inside the hub cache opens (it was read as
its suffix-less blob); the path column names the hub id and the commit read (it showed a folder of the working
directory that does not exist); an edited config gives fresh numbers in the same server and a new one."""

from __future__ import annotations

import json
import os

import pytest

from tests.app_fixtures import open_page
from tests.unit.test_hub_inputs_review import (
    CHANGED,
    CONFIG,
    HEAD,
    NUMEL,
    base_weights,
    build_hub,
    folder,
    head_copies,
    lora_files,
    model_files,
)

pytestmark = pytest.mark.usefixtures("typed_options")


@pytest.fixture(scope="module")
def hub_home(app_env):
    """The hub cache of the unit tests inside the app's test home (under its roots), as the one huggingface_hub
    uses for this module; the snapshot folders by name."""
    cache = app_env / "hub-review"
    snaps = build_hub(cache)
    saved = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(cache)
    yield snaps
    if saved is None:
        os.environ.pop("HF_HUB_CACHE", None)
    else:
        os.environ["HF_HUB_CACHE"] = saved


def _checked(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _metrics(at) -> dict[str, str]:
    """Each metric's label -> its help, which gives the exact counts ("5 of 920 parameters changed")."""
    return {m.label: m.help for m in at.metric}


def test_hub_ids_and_an_adapter_by_its_hub_id_in_the_workspace(hub_home):
    adapter_entries = sum(int((d != 0).sum()) for d in lora_files()[1].values())  # 7
    at = _checked(open_page("workspace", base="acme/tiny-base", ft=["acme/tiny-ft", "acme/tiny-lora"]))
    got = _metrics(at)
    assert list(got) == ["acme/tiny-ft", "acme/tiny-lora"]
    assert got["acme/tiny-ft"].startswith(f"{CHANGED:,} of {NUMEL:,} parameters changed")
    assert got["acme/tiny-lora"].startswith(f"{adapter_entries:,} of {NUMEL:,} parameters changed")
    table = at.dataframe[0].value
    assert list(table["path"]) == [
        "acme/tiny-base @ 2222222 (hub cache)",
        "acme/tiny-ft @ 3333333 (hub cache)",
        "acme/tiny-lora @ 7777777 (hub cache)",
    ]
    assert list(table["architecture"]) == ["LlamaForCausalLM", "LlamaForCausalLM", "LORA adapter (r=4)"]


def test_a_snapshot_file_and_index_typed_as_paths_open(hub_home):
    file, index = hub_home["new"] / "model.safetensors", hub_home["ft"] / "model.safetensors.index.json"
    at = _checked(open_page("workspace", base=str(file), ft=[str(index)]))
    assert _metrics(at)["acme/tiny-ft"].startswith(f"{CHANGED:,} of {NUMEL:,} parameters changed")
    shown = list(at.dataframe[0].value["path"])
    assert shown[0].endswith(f"snapshots/{'2' * 40}/model.safetensors") and "blobs" not in "".join(shown)


def test_a_config_edit_gives_fresh_numbers_in_a_running_and_a_new_server(app_env):
    wb, wf = head_copies(base_weights())
    base = folder(app_env / "config-edit" / "base", model_files(wb))
    ft = folder(app_env / "config-edit" / "ft", model_files(wf))
    at = _checked(open_page("workspace", base=str(base), ft=[str(ft)]))
    assert _metrics(at)["ft"].startswith(f"{CHANGED + 2:,} of {NUMEL:,} parameters changed")
    for f in (base, ft):  # the head is tied to the embedding: its stored copy is not counted
        (f / "config.json").write_text(json.dumps({**CONFIG, "tie_word_embeddings": True}))
    tied = f"{CHANGED:,} of {NUMEL - HEAD:,} parameters changed"
    assert _metrics(_checked(at.run()))["ft"].startswith(tied)  # the same session, the server's memo
    assert _metrics(_checked(open_page("workspace", base=str(base), ft=[str(ft)])))["ft"].startswith(tied)


def test_a_hub_finetunes_headers_are_read_once_per_snapshot(hub_home, monkeypatch):
    """Every page run read a hub id's headers again (0.7 s per run for a DeepSeek-V3-sized snapshot): it is kept by
    the snapshot folder its refs name now and that folder's files' stamps."""
    from subnetviz import uilogic

    calls: list[str] = []
    real = uilogic.checkpoint_info

    def counted(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(uilogic, "checkpoint_info", counted)
    at = _checked(open_page("workspace", base="acme/tiny-base", ft=["acme/tiny-ft"]))
    first = calls.count("acme/tiny-ft")
    assert first <= 1  # (0 where an earlier test of this process already read it)
    for _ in range(3):
        _checked(at.run())
    assert calls.count("acme/tiny-ft") == first
