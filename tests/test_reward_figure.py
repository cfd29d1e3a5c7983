"""The R_φ figure: its summary numbers on hand-made scores, and a readable PNG."""

from __future__ import annotations

import pandas as pd
import pytest

from medgr2.report.reward_figure import plot, summary


def _scores() -> pd.DataFrame:
    rows = [("r1#original", "original", 10.0, 9.0), ("r1#synonym", "synonym", 6.0, 6.5),
            ("r1#deletion", "deletion", 0.0, 1.0), ("r1#irrelevant", "irrelevant", -6.0, -5.0),
            ("r2#original", "original", 10.0, 5.0), ("r2#synonym", "synonym", 6.0, 4.0),
            ("r2#deletion", "deletion", 0.0, 0.5), ("r2#irrelevant", "irrelevant", -6.0, -4.0),
            ("r1#wrong_letter", "wrong_letter", float("nan"), 8.0),
            ("r2#wrong_letter", "wrong_letter", float("nan"), 7.0),
            ("r1#image_swap", "image_swap", float("nan"), 2.0),
            ("r2#image_swap", "image_swap", float("nan"), 1.0)]
    return pd.DataFrame(rows, columns=["id", "grade", "target", "score"])


def test_summary_pairs_each_original_with_its_own_probes():
    rho, pair, image_pair = summary(_scores())
    assert pair == pytest.approx(0.5)  # r1: 9 > 8; r2: 5 < 7
    assert image_pair == pytest.approx(1.0)  # r1: 9 > 2; r2: 5 > 1
    assert 0.8 < rho <= 1.0  # the probes' NaN targets stay out of the Spearman
    assert summary(_scores()[lambda d: ~d["grade"].isin(["wrong_letter", "image_swap"])])[1:] == (None, None)


def test_plot_writes_a_png(tmp_path):
    out = plot(_scores(), tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_command_draws_a_saved_scores_file_without_running_a_model(tmp_path, capsys):
    from medgr2.report.reward_figure import main

    _scores().to_csv(tmp_path / "reward_scores.csv", index=False)
    main(["--scores", str(tmp_path / "reward_scores.csv")])
    assert (tmp_path / "reward_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert "Spearman" in capsys.readouterr().out


def test_the_figure_command_names_a_missing_scores_file(tmp_path):
    from medgr2.report.reward_figure import main

    with pytest.raises(SystemExit, match="pipeline.reward_scores"):
        main(["--scores", str(tmp_path / "nope.csv")])
