"""Review "mask files users bring" (second pass), on the app (AppTest).

One unreadable saved mask hid the Workspace's whole "Mask sets" table, its download and the zoo manifest; the
Training form queued a run with a packed mask whose bytes do not hold its shape (then said the read error under
"Queued run …", and the run failed in the worker)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.app_fixtures import open_page

BAD = "masks-io2-badvals"  # uint8 with a 2 in it
SHORT = "masks-io2-packlie"  # packed bits, one byte short of its shape


def _text(element) -> str:
    return element.value.replace("\\", "").replace("\u200b", "")


@pytest.fixture(scope="module")
def broken_uploads(app_env):
    """The two unreadable masks as saved uploads in the app's home (removed afterwards: the home is shared), over a
    parameter of the zoo's base with its shape (as a zoo mask has it), so that only their values are wrong; the
    packed one's parameter name and shape."""
    from subnetviz import config
    from subnetviz.masks import mask_file_shapes
    from subnetviz.selection import saved_masks

    zoo_mask = next(path for label, path in saved_masks().items() if label.startswith("masks/"))
    name, shape = next((n, s) for n, s in mask_file_shapes(zoo_mask).items() if len(s) == 2)
    uploads = config.home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    bad, short = uploads / f"{BAD}.safetensors", uploads / f"{SHORT}.safetensors"
    values = np.zeros(shape, np.uint8)
    values[0, 1] = 2
    save_file({name: values}, str(bad))
    bits = np.packbits(np.ones(shape, bool))[:-1]  # a byte short of the entries
    save_file(
        {name: bits}, str(short), metadata={"format": "subnetviz-mask/1", f"shape:{name}": f"{shape[0]},{shape[1]}"}
    )
    yield name, shape
    bad.unlink()
    short.unlink()


def test_one_unreadable_mask_leaves_the_others_listed(broken_uploads):
    from subnetviz.selection import saved_masks

    good = next(label for label in saved_masks() if label.startswith("masks/"))  # a zoo mask
    bad = f"uploads/{BAD}"
    alone = open_page("workspace", masks=[good])
    assert not alone.exception
    listed = list(alone.session_state["_tables"]["masks"][1]["mask"])
    assert good in listed

    at = open_page("workspace", masks=[bad, good])
    assert not at.exception, [e.message for e in at.exception]
    # the same table as without the bad file, and the page's sections after it
    assert list(at.session_state["_tables"]["masks"][1]["mask"]) == listed
    assert [s.value for s in at.subheader][-2:] == ["Masks", "Demo zoo manifest"]
    (said,) = [_text(e) for e in at.error]
    assert f"{BAD}.safetensors: mask '{broken_uploads[0]}' has values outside {{0, 1}}" in said
    assert "\n" not in said
    (pick,) = [s for s in at.selectbox if s.key == "mask_dl"]
    assert pick.options == listed and bad not in pick.options  # (the unreadable file is not offered to download)


def _launch_refused(stored: str) -> str:
    """The Training form launched (SFT) with the stored upload ``stored`` as its mask: the one error it shows, after
    checking that nothing was queued and no success said (what it queued before the fixes is cancelled)."""
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    before = set(runner.list_runs()["id"])
    label = f"uploads/{stored}"
    at = open_page("training", masks=[label])
    at.selectbox(key="tr_mask").set_value(label)
    at.selectbox(key="tr_alg").set_value("sft")
    try:
        next(b for b in at.button if "Launch" in b.label).click().run()
        assert not at.exception and not at.success, [s.value for s in at.success]
        (said,) = [_text(e) for e in at.main.error]
        assert set(runner.list_runs()["id"]) == before
        return said
    finally:
        for run in set(runner.list_runs()["id"]) - before:
            runner.cancel(run)


def test_training_refuses_a_packed_mask_its_bytes_cannot_hold_and_queues_nothing(broken_uploads):
    name, shape = broken_uploads
    need = (shape[0] * shape[1] + 7) // 8
    said = _launch_refused(SHORT)
    assert f"{SHORT}.safetensors: packed mask '{name}' has {need - 1} values of torch.uint8" in said
    assert f"expected {need:,} uint8 bytes for shape {shape}" in said and "\n" not in said


def test_training_refuses_a_mask_with_values_outside_0_1_and_queues_nothing(broken_uploads):
    """The submit check reads headers; the mask's values were read only by the worker, after "Queued run"."""
    said = _launch_refused(BAD)
    assert f"{BAD}.safetensors: mask '{broken_uploads[0]}' has values outside {{0, 1}}" in said
