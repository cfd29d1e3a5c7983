"""Rationale styles: built, split and restyled after an option reshuffle."""

from __future__ import annotations

import pytest

from medgr2.data.prompting import rationale_text, restyle_rationale, split_rationale


def test_verify_rationale_checks_each_option_until_the_answer():
    text = rationale_text("MRI image. no lesion.", ["lesion present", "no abnormality"], 1)
    assert text == ("MRI image. no lesion. Answer: no abnormality. Check: A) lesion present? no. "
                    "B) no abnormality? yes.")
    assert rationale_text("x.", ["a", "b", "c"], 0) == "x. Answer: a. Check: A) a? yes."


def test_split_returns_findings_and_conclusion_for_both_styles():
    assert split_rationale("CT image. Answer: CT. Check: A) CT? yes.") == ("CT image.", " Answer: CT. Check: A) CT? yes.")
    assert split_rationale("CT image. The answer is CT.") == ("CT image.", " The answer is CT.")
    assert split_rationale("free text from a real generator") == ("free text from a real generator", "")


def test_restyle_follows_a_reshuffle_and_keeps_the_style():
    before = rationale_text("US image.", ["CT", "US", "OCT"], 1)
    assert restyle_rationale(before, ["US", "OCT", "CT"], 0) == "US image. Answer: US. Check: A) US? yes."
    answer_style = rationale_text("US image.", ["CT", "US"], 1, style="answer")
    assert restyle_rationale(answer_style, ["US", "CT"], 0) == answer_style
    assert restyle_rationale("no conclusion here", ["a", "b"], 1) == "no conclusion here"


def test_unknown_style_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown rationale style 'essay'"):
        rationale_text("x", ["a"], 0, style="essay")
