"""What a page comparing a base with finetunes says when it has no pair: the sidebar where nothing was chosen, the
errors above where a chosen base was refused or every chosen finetune was left out (it said "Choose a base and
finetuned checkpoints in the sidebar." with both chosen and shown there)."""

from subnetviz.selection import Workspace
from subnetviz.uilogic import missing_pair_line


def _ws(base, finetuned=(), left_out=()):
    return Workspace(base, "base" if base else "", tuple(finetuned), (), None, "auto", None, tuple(left_out))


def test_each_case_says_where_to_look():
    assert missing_pair_line(_ws("/m/base", [("ft", "/m/ft")]), True) is None
    assert missing_pair_line(_ws(None), False) == "Choose a base and finetuned checkpoints in the sidebar."
    assert missing_pair_line(_ws("/m/base"), True) == "Choose a base and finetuned checkpoints in the sidebar."
    assert missing_pair_line(_ws(None), True).startswith("The base could not be opened (see above)")
    left = [("gpt2", "/m/gpt2", "gpt2 is left out (it cannot be compared with the base): ...")]
    assert missing_pair_line(_ws("/m/base", left_out=left), True).startswith(
        "No finetuned checkpoint could be compared with the base (see above)"
    )
