"""The Training page against the fifth masked-training review: a run whose curves are NaN from step 1, overlaid on
another run (the Runs view and its HTML export failed with KeyError), and the run card of a mask outside the
server's roots (its ">50 % dense" warning dropped without a word while the provenance warning, read from the same
file without the roots check, still showed). Planted runs and masks are written here by hand."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.app_fixtures import add_finished_run, open_page, plotly_specs

pytestmark = pytest.mark.slow

NAN = float("nan")


def _rows(path: Path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps({"time": 1.0, "total": 4, **r}) + "\n" for r in rows))


def _diverged_rows() -> list[dict]:
    """As a run of a base holding an inf weight logs them: loss, grad_norm and entropy NaN at every step."""
    return [{"step": s, "loss": NAN, "grad_norm": NAN, "entropy": NAN, "mean_token_accuracy": 0.0} for s in range(1, 5)]


def _finite_rows() -> list[dict]:
    return [{"step": s, "loss": 1.0 / s, "grad_norm": 2.0 + s, "entropy": 0.5} for s in range(1, 7)]


# --- 1: the figure function ----------------------------------------------------------------------------------------


@pytest.fixture
def own_runner(tmp_path):
    from subnetviz.jobs.runner import JobRunner

    return JobRunner(tmp_path / "runs", max_concurrent=1)


def _plant(runner, run_id: str, rows: list[dict]) -> None:
    _rows(add_finished_run(runner, run_id, "train", run_id, {"kind": "train"}), rows)


def _by_run(fig) -> dict:
    """Legend label -> (its legend entries, its line colours, its mark colours, the steps marked per panel)."""
    out: dict = {}
    for t in fig.data:
        entry = out.setdefault(t.legendgroup, {"legend": 0, "lines": set(), "marks": set(), "marked": {}})
        if t.mode == "lines+markers":
            entry["legend"] += bool(t.showlegend)
            entry["lines"].add(t.line.color)
        elif t.mode == "markers":
            entry["marks"].add(t.marker.color)
            entry["marked"][t.xaxis] = list(t.x)
    return out


@pytest.mark.parametrize("order", ["diverged chosen", "diverged overlaid"])
def test_a_run_nan_from_step_1_overlaid_on_another_has_its_colour_legend_and_marks(own_runner, order):
    """Overlaid with a run that draws loss, grad_norm and entropy, the run NaN from step 1 added no row to the
    curves' frame, had no colour, and ``_mark_nonfinite`` raised KeyError (in either order)."""
    from subnetviz.report.training import curves_figure

    _plant(own_runner, "ok", _finite_rows())
    _plant(own_runner, "nan", _diverged_rows())
    ids = ["nan", "ok"] if order == "diverged chosen" else ["ok", "nan"]
    fig = curves_figure(own_runner, ids, {"ok": "ok", "nan": "nan"})
    nan, ok = "nan (diverged at step 1)", "ok"
    runs = _by_run(fig)
    assert set(runs) == {nan, ok}
    assert runs[nan]["legend"] == runs[ok]["legend"] == 1  # one legend entry each, the diverged one saying so
    (nan_colour,), (ok_colour,) = runs[nan]["lines"], runs[ok]["lines"]
    assert nan_colour != ok_colour and runs[nan]["marks"] == {nan_colour}  # its x marks in its own colour
    assert runs[nan]["marked"] == {"x": [1, 2, 3, 4], "x2": [1, 2, 3, 4], "x3": [1, 2, 3, 4]}  # every step, 3 panels
    assert not runs[ok]["marked"]
    assert [a.text for a in fig.layout.annotations][:3] == ["loss", "grad_norm", "entropy"]
    title = fig.layout.title.text
    assert ("diverged at step 1" in title) == (order == "diverged chosen")  # the chosen run's title says so too


def test_a_run_nan_from_step_1_drawn_alone_says_it_diverged(own_runner):
    from subnetviz.report.training import curves_figure

    _plant(own_runner, "nan", _diverged_rows())
    fig = curves_figure(own_runner, ["nan"], {"nan": "nan"})
    assert fig.layout.title.text == "Run nan (diverged at step 1)"
    assert len([t for t in fig.data if t.mode == "markers"]) == 3


def test_every_overlaid_run_has_a_legend_entry_though_it_logs_nothing_the_first_panel_shows(own_runner):
    """The legend is drawn from the first panel's lines: a run that logs no loss (the first panel) had none."""
    from subnetviz.report.training import curves_figure

    _plant(own_runner, "ok", _finite_rows())
    _plant(own_runner, "ent", [{"step": s, "entropy": 0.3} for s in range(1, 4)])
    runs = _by_run(curves_figure(own_runner, ["ok", "ent"], {"ok": "ok", "ent": "ent"}))
    assert runs["ok"]["legend"] == runs["ent"]["legend"] == 1


# --- 1: the page and its export -----------------------------------------------------------------------------------


def _curves(at) -> list[dict]:
    return [s for s in plotly_specs(at) if str(s["layout"].get("title", {}).get("text", "")).startswith("Run ")]


@pytest.mark.parametrize("chosen", ["t5-nan", "t5-ok"])
def test_the_runs_view_and_its_export_draw_a_run_nan_from_step_1_overlaid(finished_run, app_env, exports, chosen):
    """``training?tr_view=Runs&tr_run=<finite>&tr_overlay=<NaN from step 1>`` (and the other way round) said
    "Something went wrong inside subnetviz (KeyError)", and so did its HTML export."""
    import html as _html

    _rows(finished_run("t5-ok", {"algorithm": "sft"}).parent.parent, _finite_rows())
    _rows(finished_run("t5-nan", {"algorithm": "sft"}).parent.parent, _diverged_rows())
    other = "t5-ok" if chosen == "t5-nan" else "t5-nan"
    at = open_page("training", tr_view="Runs", tr_run=chosen, tr_overlay=other)
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    (fig,) = _curves(at)
    label = "t5-nan · t5-nan (diverged at step 1)"
    legend = [t["name"] for t in fig["data"] if t.get("mode") == "lines+markers" and t.get("showlegend")]
    assert sorted(legend) == sorted([label, "t5-ok · t5-ok"])
    marks = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert len(marks) == 3 and {t["legendgroup"] for t in marks} == {label}
    page = _html.unescape(exports["Training runs"]())  # (it raised the KeyError)
    shown = label.replace("·", "\\u00b7")  # (as the figure's JSON writes it)
    assert [m for m in ("loss", "grad_norm", "entropy") if f"{shown}: {m} NaN" in page] == [
        "loss",
        "grad_norm",
        "entropy",
    ]


# --- 3: the run card of a mask outside the server's roots ----------------------------------------------------------


def _dense_mask(path: Path) -> Path:
    """A mask denser than 50 % in every tensor, whose provenance names the zoo's grpo-s0 (its finetune: GRPO,
    other lr and steps than the run below), written where the test says."""
    from subnetviz.demo import load_zoo
    from subnetviz.masks import MaskSet, save_mask_set

    member = next(m for m in load_zoo().members if m.id == "grpo-s0")
    masks = {f"model.layers.0.mlp.{n}.weight": torch.ones(4, 4, dtype=torch.bool) for n in ("up", "down", "gate")}
    meta = {"finetuned": "grpo-s0", "finetuned_path": str(member.path)}
    return save_mask_set(path, MaskSet(masks, meta))


def _warnings(at) -> list[str]:
    return [e.value.replace("\\", "").replace("\u200b", "") for e in at.main.warning]


@pytest.fixture
def outside(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5-outside-roots").resolve()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_run_card_of_a_mask_outside_the_roots_says_in_one_line_it_cannot_be_checked(finished_run, app_env, outside):
    """A run trained (from the CLI) inside a 100 %-dense mask outside the server's roots: its card showed the
    provenance warning (read with no roots check) and dropped the density one without a word. Now neither is read
    here, and one line says so and why; the same file under the home gives both warnings."""
    from subnetviz import config

    inside = Path(app_env) / "runs" / "t5-mask-inside" / "dense.safetensors"
    far = _dense_mask(outside / "dense.safetensors")
    _dense_mask(inside)
    assert not any(str(far).startswith(str(r)) for r in config.allowed_roots())
    try:
        cfg = {"algorithm": "sft", "learning_rate": 1e-4, "steps": 4, "data": "sft_A.jsonl"}
        finished_run("t5-card-out", {**cfg, "mask": str(far)})
        finished_run("t5-card-in", {**cfg, "mask": str(inside)})
        at = open_page("training", tr_view="Runs", tr_run="t5-card-out")
        assert not at.exception and not at.error, [e.value for e in at.error]
        (line,) = _warnings(at)
        assert line.startswith("This mask's density (1 = frozen?) and provenance (the run it came from) cannot be ")
        assert "outside the folders this server may read" in line and str(outside) not in line
        at = open_page("training", tr_view="Runs", tr_run="t5-card-in")
        assert not at.exception and not at.error, [e.value for e in at.error]
        said = _warnings(at)
        assert len(said) == 2, said
        assert any(w.startswith("The mask comes from grpo-s0") for w in said)
        assert any(w.startswith("This mask is denser than 50 % in 3 of its 3 tensors") for w in said)
    finally:
        shutil.rmtree(inside.parent, ignore_errors=True)


def test_a_masks_provenance_obeys_the_roots_on_every_call(outside, monkeypatch):
    """``selection.mask_info`` read the header of any file (``safe_open``, no roots check) and memoised it by
    path and stamp: under enforced roots a file outside them has no provenance here, asked again on every call."""
    from subnetviz import selection
    from subnetviz.cache import file_stamp
    from subnetviz.errors import PathNotAllowedError
    from subnetviz.training.mask_origin import dense_note_of

    far = str(_dense_mask(outside / "dense.safetensors"))
    home = outside.parent / "t5-home"
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(home))
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS", raising=False)
    assert selection.mask_info(far, file_stamp(far))["finetuned"] == "grpo-s0"  # the CLI: not restricted
    assert dense_note_of(far).startswith("This mask is denser than 50 %")
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    assert selection.mask_info(far, file_stamp(far)) == {}  # not the memoised header
    assert selection._provenance(far) == {}
    with pytest.raises(PathNotAllowedError, match="outside the folders this server may read"):
        dense_note_of(far)
    with pytest.raises(PathNotAllowedError):
        dense_note_of(f"random:{far}")
    assert os.path.exists(far)
