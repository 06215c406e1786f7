"""Review "Workspace" (sixth pass), without a browser.

1. Workspace put up to six headline metrics in a row: at 1024 px with the sidebar open a sixth (or a fifth) of the main
   column cut "68.09 %" to "68.0…" and "99.9998 %" (one change in 10^5) to "99.99…". :func:`metrics_per_row` gives
   rows of at most 4 (a quarter of the column, ``METRIC_EMS``), fewer where a value is wider.
2. Labels that read alike on a page (NFC and NFD "café"; "ft", "ft " and "ft\\u200b") were not told apart: the clash
   rule that makes a second ``ft`` ``ft-2`` compared exact strings, so two models with different numbers shared a
   name on every page.
"""

from __future__ import annotations

import unicodedata

import pytest

from subnetviz.uilogic import METRIC_EMS, label_key, metric_ems, metrics_per_row, sidebar_choice

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def _labels(base, fts):
    return sidebar_choice(base, fts, [], "stored", "auto", {}, {}, None).workspace.labels


# --- 1. the headline metrics' rows -------------------------------------------------------------------------------------
def _fits(values, n):
    """Each of ``n`` columns gets at least 4/n quarters of the main column at 1024 px (the gaps between fewer columns
    add to that): a value fits where it is no wider than that."""
    return max(metric_ems(v) for v in values) <= METRIC_EMS * 4 / n


def test_the_demo_zoos_five_numbers_come_four_to_a_row_and_fit():
    demo = ["68.09 %", "69.79 %", "67.04 %", "42.79 %", "36.02 %"]  # the fresh Workspace's five finetunes
    assert not _fits(demo, 5)  # the old row of five (100 px each in Chromium, 117 px needed): cut
    assert metrics_per_row(demo) == 4 and _fits(demo, 4)
    assert metrics_per_row(demo + ["69.79 %"]) == 4  # six were six in a row (81 px each)
    assert metrics_per_row(["68.09 %"] * 32) == 4  # 32 finetunes: eight rows, none cut


def test_a_value_wider_than_a_quarter_takes_a_row_of_three_or_fewer():
    one_change = ["99.9998 %", "68.09 %", "69.79 %", "67.04 %", "42.79 %", "36.02 %"]
    assert metric_ems("99.9998 %") > METRIC_EMS  # Chromium measured 153 px; a quarter at 1024 px is 129 px
    assert metrics_per_row(one_change) == 3 and _fits(one_change, 3)
    wider = ["99.9999999 %", "1.00 %"]
    assert metrics_per_row(wider) == 2 and _fits(wider, 2) and not _fits(wider, 3)
    assert metrics_per_row(["9" * 40]) == 1  # never fewer than one


@pytest.mark.parametrize("count", [1, 2, 3])
def test_fewer_values_than_a_row_take_the_row_between_them(count):
    assert metrics_per_row(["68.09 %"] * count) == count


# --- 2. labels that read alike ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        (NFC, NFD),
        ("ft", "ft "),
        ("ft", " ft"),
        ("ft", "ft\u200b"),  # zero-width space (a format character)
        ("ft", "f\u200dt\ufeff"),  # zero-width joiner, byte order mark
        ("ft", "ft\u00ad"),  # soft hyphen
        ("ft", "ft\ufe0f"),  # a variation selector
        ("a b", "a  b"),  # a browser shows a run of spaces as one
        ("a b", "a\u00a0b"),
    ],
)
def test_labels_that_read_alike_have_one_key(a, b):
    assert a != b and label_key(a) == label_key(b)


@pytest.mark.parametrize(("a", "b"), [("ft", "Ft"), ("ft", "ft-2"), ("ft", "ft2"), (NFC, "cafe")])
def test_labels_that_read_differently_keep_their_keys(a, b):
    assert label_key(a) != label_key(b)


def test_checkpoints_whose_names_read_alike_get_labels_that_read_differently(tmp_path, monkeypatch):
    """The review's t11: NFC and NFD "café", and "ft", "ft " and "ft\\u200b" were two metrics reading "café" and three
    reading "ft" (Overlap's two "Δ café" masks, the Series axis's café, café, ft, ft, ft)."""
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    (tmp_path / "base").mkdir()
    folders = [tmp_path / "nfc" / NFC, tmp_path / "nfd" / NFD, tmp_path / "a" / "ft"]
    folders += [tmp_path / "sp" / "ft ", tmp_path / "zw" / "ft\u200b"]
    for f in folders:
        f.mkdir(parents=True)
    labels = _labels(str(tmp_path / "base"), [str(f) for f in folders])
    assert labels == [NFC, f"{NFD}-2", "ft", "ft -2", "ft\u200b-2"]
    assert len({label_key(lab) for lab in labels}) == len(labels)  # each reads differently on a page


def test_a_suffix_reading_as_a_label_taken_is_passed_over(tmp_path, monkeypatch):
    """A second "ft" is "ft-2" unless that reads as a label already taken (a folder named "ft-2"): then "ft-3"."""
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    (tmp_path / "base").mkdir()
    folders = [tmp_path / "a" / "ft", tmp_path / "b" / "ft-2\u200b", tmp_path / "c" / "ft"]
    for f in folders:
        f.mkdir(parents=True)
    assert _labels(str(tmp_path / "base"), [str(f) for f in folders]) == ["ft", "ft-2\u200b", "ft-3"]


def test_a_finetune_whose_name_reads_as_the_bases_is_suffixed(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "rl" / "final\u200b").mkdir(parents=True)
    assert _labels(str(tmp_path / "run" / "final"), [str(tmp_path / "rl" / "final\u200b")]) == ["final\u200b-2"]


def test_folders_of_one_name_are_still_ft_and_ft_2(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    (tmp_path / "base").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "ft").mkdir(parents=True)
    assert _labels(str(tmp_path / "base"), [str(tmp_path / d / "ft") for d in ("a", "b")]) == ["ft", "ft-2"]
