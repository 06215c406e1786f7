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
