"""Values a page reads from a shared URL by hand (not through a bound widget): anything a stranger wrote
there gives the page's default or the nearest allowed value, never an exception."""

import math

import pytest

from subnetviz.uilogic import url_choice, url_number


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("0.3", 0.3),
        ("0", 0.0),
        ("0.95", 0.95),
        ("5", 0.95),  # above the slider's range: its end
        ("-1", 0.0),  # below: its start
        ("1e309", 0.2),  # inf: no number
        ("nan", 0.2),
        ("abc", 0.2),
        ("", 0.2),
        ("<b>x</b>", 0.2),
        (None, 0.2),  # not in the URL
    ],
)
def test_url_number_is_a_finite_value_in_range_or_the_default(raw, want):
    got = url_number(raw, 0, 0.95, 0.2)
    assert math.isfinite(got) and got == pytest.approx(want)
    assert isinstance(url_number(raw, 0, 1, 0), float)  # a float slider refuses an int value


def test_url_choice_names_an_offered_option_or_gives_the_default():
    assert url_choice("16", [4, 8, 16], 8) == 16 and isinstance(url_choice("16", [4, 8, 16], 8), int)
    assert url_choice("right", ["left", "right"], "left") == "right"
    for raw in ("99999999999", "abc", "", None, "16.0", " 16"):
        assert url_choice(raw, [4, 8, 16], 8) == 8


def test_json_shown_to_visitors_holds_no_server_path(tmp_path, monkeypatch):
    """The zoo manifest the Workspace page shows named its runs folder by its absolute server path."""
    from subnetviz.uilogic import redacted

    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path / "home"))
    (tmp_path / "home" / "runs").mkdir(parents=True)
    got = redacted({"extras": {"runs_root": str(tmp_path / "home" / "runs"), "n": 3, "ids": ["a", f"{tmp_path}/x"]}})
    assert got == {"extras": {"runs_root": "home/runs", "n": 3, "ids": ["a", "…/x"]}}


@pytest.mark.parametrize(
    "raw, want", [("3", 3), ("007", 7), ("²", None), ("٣", None), ("-1", None), ("1e3", None), ("", None), (None, None)]
)
def test_a_url_number_is_ascii_digits(raw, want):
    """'²' and '٣' are digits to str.isdigit: int('²') raised (a bug notice on Behaviour, a failed export on Spectra)."""
    from subnetviz.uilogic import url_int

    assert url_int(raw) == want and url_int(raw, 0) == (0 if want is None else want)


def test_a_url_naming_many_or_the_same_checkpoints(tmp_path, monkeypatch):
    """A shared URL can list thousands of finetuned checkpoints (each opened and drawn: 300 error boxes, then a
    login form for a 26 KB URL): at most MAX_FINETUNED are taken, with one line saying so. A checkpoint named twice
    (its zoo id and its folder) is compared once, and the base is not compared with itself."""
    from subnetviz.uilogic import MAX_FINETUNED, workspace_of

    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    members = {}
    for i in range(MAX_FINETUNED + 8):
        (tmp_path / f"m{i}").mkdir()
        members[f"m{i}"] = str(tmp_path / f"m{i}")
    ws, refused = workspace_of("m0", list(members), [], "stored", "auto", members, {}, None)
    assert len(ws.finetuned) == MAX_FINETUNED and "39 finetuned checkpoints chosen" in str(
        refused
    )  # (the base left out)
    ws, refused = workspace_of("m0", ["m1", str(tmp_path / "m1"), str(tmp_path / "m0"), "m2"], [], "stored", "auto",
                               members, {}, None)  # fmt: skip
    assert refused is None and [label for label, _ in ws.finetuned] == ["m1", "m2"]
    for d in ("a/ft", "b/ft"):
        (tmp_path / d).mkdir(parents=True)
    ws, _ = workspace_of(
        "m0", [str(tmp_path / "a/ft"), str(tmp_path / "b/ft")], [], "stored", "auto", members, {}, None
    )
    assert [label for label, _ in ws.finetuned] == ["ft", "ft-2"]  # as the library labels them (was: not unique)
