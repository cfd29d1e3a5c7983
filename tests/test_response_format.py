"""Answer / rationale extraction and the Med-R1 format reward."""

from __future__ import annotations

import doctest

import pytest

import medgr2.data.response_format as answers_mod
from medgr2.data.response_format import extract_answer, extract_think, format_reward


def test_doctests() -> None:
    assert doctest.testmod(answers_mod).failed == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>B</answer>", "B"),
        ("<answer> B </answer>", "B"),
        ("<answer>b</answer>", "B"),
        ("<answer>(B)</answer>", "B"),
        ("<answer>( c )</answer>", "C"),
        ("<answer>[D]</answer>", "D"),
        ("<answer>B.</answer>", "B"),
        ("<answer>B) left side</answer>", "B"),
        ("<answer>A: CT</answer>", "A"),
        ("<ANSWER>d</ANSWER>", "D"),
        ("<answer>\n  C\n</answer>", "C"),
        ("<think>B looks right</think>\n<answer>A</answer>", "A"),
        ("<answer>A</answer><answer>C</answer>", "C"),  # last tag wins
        ("<answer>A</answer> hmm <answer>maybe</answer>", None),  # last tag has no letter
        ("<answer>E</answer>", None),  # only A-D are options
        ("<answer>Bone</answer>", None),  # a word starting with a letter is not a letter
        ("<answer>Option B</answer>", None),  # letter not at the start
        ("<answer></answer>", None),
        ("<answer>B", None),  # unclosed (truncated completion)
        ("B", None),  # no tag at all
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>lesion: yes, left</think><answer>B</answer>", "lesion: yes, left"),
        ("<think>\n two\n lines \n</think>", "two\n lines"),
        ("<think>first</think><think>second</think>", "first"),
        ("<think></think><answer>A</answer>", ""),
        ("<answer>A</answer>", None),
        ("<think>unclosed", None),
    ],
)
def test_extract_think(text: str, expected: str | None) -> None:
    assert extract_think(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>A</answer>", 1.0),
        ("  <think>a\nb</think>\n\n<answer> C </answer>\n", 1.0),  # outer whitespace stripped
        ("<think>x</think><answer>not a letter</answer>", 1.0),  # format only, not correctness
        ("<answer>A</answer>", 0.0),  # no think
        ("<think>x</think>", 0.0),  # no answer
        ("<answer>A</answer><think>x</think>", 0.0),  # wrong order
        ("<think>x</think> so <answer>A</answer>", 0.0),  # text between tags
        ("<think>x</think><answer>A</answer> done", 0.0),  # trailing text
        ("<THINK>x</THINK><ANSWER>A</ANSWER>", 0.0),  # tags are case-sensitive, as in Med-R1
    ],
)
def test_format_reward(text: str, expected: float) -> None:
    assert format_reward(text) == expected
