"""Behaviour sixth-pass fixes without a model: an empty prompt under a tokenizer that puts ``<bos>`` in front encodes
as ``<bos> answer`` (its BOS was taken for an appended token and scored after the answer), KL columns in [1e-3, 1e-2]
keep four significant digits on the page and in the export alike, and a mask named as another mask's random control
(``random(m)`` beside ``m``) is refused in one line by the CLI, the job config and the page's path."""

import pandas as pd
import pytest
from tokenizers import processors

from subnetviz.analysis.behavior import Prompt
from subnetviz.analysis.behavior_data import apart_note, encode, encodings, special_layout, tail_note
from subnetviz.errors import ConfigError, SubnetvizError
from subnetviz.report.formats import SCIENTIFIC, column_format, display_frame, format_value, formatted_frame
from tests.models import char_tokenizer


def _tok(single: str | None):
    """The test's character tokenizer (unknown characters -> <pad>), its post-processor ``single`` (None: none)."""
    tok = char_tokenizer()
    if single is not None:
        specials = [(t, tok.convert_tokens_to_ids(t)) for t in ("<bos>", "<eos>") if t in single]
        tok._tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return tok


def _ids(tok, text: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(text))


# --- 1. what a tokenizer adds in front and at the end ----------------------------------------------------------------
@pytest.mark.parametrize(("single", "layout"), [(None, (0, 0)), ("<bos> $A", (1, 0)), ("<bos> $A <eos>", (1, 1))])
def test_the_special_tokens_layout_is_learnt_from_a_probe_text(single, layout):
    assert special_layout(_tok(single)) == layout


def test_an_empty_prompt_under_a_bos_tokenizer_is_bos_then_its_answer():
    tok = _tok("<bos> $A")
    bos = tok.bos_token_id
    (e,) = encode(tok, [Prompt("", "12+3=15")])
    assert e.ids.tolist() == [bos, *_ids(tok, "12+3=15")]  # not "12+3=15 <bos>"
    assert (e.answer_start, e.end, e.tail, e.apart) == (1, 8, (), False)
    assert apart_note([e]) is None and tail_note([e], tok) is None  # nothing merged, nothing appended
    # the same as the prompt written with its BOS, which was right
    (written,) = encode(tok, [Prompt("<bos>", "12+3=15")])
    assert written.ids.tolist() == e.ids.tolist() and written.answer_start == 1


def test_an_empty_prompt_under_a_bos_and_eos_tokenizer_keeps_its_bos_in_front_and_its_eos_at_the_end():
    tok = _tok("<bos> $A <eos>")
    (e, bare) = encode(tok, [Prompt("", "15"), Prompt("")])
    assert e.ids.tolist() == [tok.bos_token_id, *_ids(tok, "15"), tok.eos_token_id]
    assert (e.answer_start, e.end, e.tail) == (1, 3, (tok.eos_token_id,))
    assert bare.ids.tolist() == [tok.bos_token_id, tok.eos_token_id] and bare.tail == (tok.eos_token_id,)


def test_a_prompt_left_with_no_token_before_its_answer_is_refused_and_none_for_a_finetunes_comparison():
    tok = _tok("$A <eos>")  # an EOS at the end, nothing in front: the empty prompt holds no position
    with pytest.raises(ConfigError, match=r"prompt 0: the prompt '' encodes to no token") as err:
        encode(tok, [Prompt("", "15")])
    assert "\n" not in str(err.value)
    assert encodings(_tok(None), [Prompt(""), Prompt("1+2=", "3")])[0] is None


# --- 3. KL columns in [1e-3, 1e-2] ---------------------------------------------------------------------------------
KL = [0.00100322, 0.00531234, 0.0087, 0.0312]


def test_kl_columns_below_one_percent_keep_four_significant_digits_on_the_page_and_in_the_export():
    df = pd.DataFrame({"model": ["a", "b", "c", "d"], "kl_forward": KL, "kl_reverse": KL, "loss": KL})
    assert column_format("kl_forward", df["kl_forward"]) == SCIENTIFIC
    _, shown = display_frame(df)
    assert shown["kl_forward"] == shown["kl_reverse"] == SCIENTIFIC  # the page's printf: "%.3e"
    exported = formatted_frame(df)
    assert list(exported["kl_forward"]) == ["1.003e-3", "5.312e-3", "8.700e-3", "3.120e-2"]
    assert format_value(0.00100322, shown["kl_forward"]) == "1.003e-3"
    # other float columns keep their rules: no format (four decimals) above 1e-3
    assert "loss" not in shown


def test_kl_columns_from_one_percent_up_and_tiny_non_kl_columns_keep_their_formats():
    assert column_format("kl_forward", pd.Series([0.0123, 0.5])) is None
    assert column_format("delta", pd.Series([0.0053, 0.5])) is None
    assert column_format("delta", pd.Series([0.00053, 0.5])) == SCIENTIFIC
    assert column_format("skill", pd.Series([0.0053, 0.5])) is None  # (kl inside a word is not a KL)


# --- 4. a mask named as another's random control ------------------------------------------------------------------
def test_the_cli_refuses_a_mask_named_as_another_masks_random_control():
    from subnetviz.cli.analysis import _mask_specs

    with pytest.raises(SubnetvizError, match=r"--mask: the mask name 'random\(m\)' is that of the random control of"):
        _mask_specs(["m=topk:0.2", "random(m)=update"])
    with pytest.raises(SubnetvizError, match="random control"):
        _mask_specs(["random(update)=topk:0.2", "update"])
    assert list(_mask_specs(["random(x)=update", "m=topk:0.2"])) == ["random(x)", "m"]  # no mask x: no clash


def test_the_cli_says_it_in_one_line(capsys, tmp_path):
    from subnetviz.cli import main

    argv = [
        "behavior",
        "base",
        "ft",
        "--mask",
        "m=topk:0.2",
        "--mask",
        "random(m)=update",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --mask: the mask name 'random(m)'"), err


def test_the_job_config_the_page_and_the_library_refuse_it_before_reading_a_model():
    from subnetviz.analysis.behavior import behavior, validate_config
    from subnetviz.analysis.cost import behavior_cost
    from subnetviz.jobs.kinds import validate_job_config

    cfg = {"kind": "behavior", "base": "nowhere/base", "finetuned": ["nowhere/ft"], "masks": {}}
    cfg["masks"] = {"zoo grpo-s0": "/nowhere/a.safetensors", "random(zoo grpo-s0)": "/nowhere/b.safetensors"}
    # a queued job's config; the page prices its config first (behavior_cost), then computes it (run_config)
    for check in (validate_job_config, validate_config, behavior_cost):
        with pytest.raises(ConfigError, match=r"behavior config: the mask name 'random\(zoo grpo-s0\)'") as err:
            check(cfg)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"behaviour: the mask name 'random\(m\)'"):
        behavior("nowhere/base", ["nowhere/ft"], [Prompt("1+2=", "3")], masks={"m": {}, "random(m)": {}})
