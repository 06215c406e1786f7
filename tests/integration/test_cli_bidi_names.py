"""The command line prints a name's direction controls as ``⟨U+202E⟩``, as the page and the exports show them (the
exports6 review): after a finetune's folder named ``grpo-s1-\u202e``, ``analyze``'s summary line was printed with the
raw override, and a browser's log view or a notebook drew it right to left (sparsity 0.697930 read "039796.0")."""

from __future__ import annotations

import shutil

from subnetviz.__main__ import main
from subnetviz.text import terminal_text
from tests.models import make_tiny_llama


def test_terminal_text_shows_direction_controls():
    assert terminal_text("grpo-s1-\u202e 0.697930") == "grpo-s1-⟨U+202E⟩ 0.697930"
    assert terminal_text("a\u2066b\u2069\u200f\x1b[31m") == "a⟨U+2066⟩b⟨U+2069⟩⟨U+200F⟩\\x1b[31m"
    assert terminal_text("مرحبا grpo") == "مرحبا grpo"  # (right-to-left letters themselves are text)


def test_analyze_prints_a_folder_name_s_override_as_text(tmp_path, capsys):
    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32, heads=2)
    ft = tmp_path / "grpo-s1-\u202e"
    shutil.copytree(base, ft)
    assert main(["analyze", str(base), str(ft), "--out", str(tmp_path / "o"), "--no-spectra", "--no-cache"]) == 0
    out, err = capsys.readouterr()
    assert "grpo-s1-⟨U+202E⟩" in out, out
    assert "\u202e" not in out and "\u202e" not in err
