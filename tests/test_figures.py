"""The figures of a judge's results, drawn from small synthetic tables (no model, no run)."""

from __future__ import annotations

import struct

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.figures import NLL_STYLE, P_STYLE, draw_nll, draw_p_correct, nll_figure, plot, save  # noqa: E402
from pipeline.metrics import CRITERIA  # noqa: E402
from pipeline.verdict import CORRECT, INCORRECT, INVALID  # noqa: E402


def tables(correct: int = 79, incorrect: int = 21, invalid: int = 3, no_nll: int = 0):
    """(samples, summary) shaped as report.write passes them to plot(): the judged-correct answers' NLLs lie
    inside the incorrect ones' range, so drawn as plain overlapping bars they would be hidden."""
    rng = np.random.default_rng(1)
    nll = np.concatenate([rng.normal(10, 1, correct), rng.normal(10, 4, incorrect), rng.normal(10, 2, invalid)])
    verdict = [CORRECT] * correct + [INCORRECT] * incorrect + [INVALID] * invalid
    samples = pd.DataFrame({"sequence_nll": nll, "judge_verdict": verdict,
                            "judge_p_correct": rng.uniform(size=len(nll)), "human_label": np.nan,
                            "exact_match": (np.arange(len(nll)) % 3 == 0).astype(int)})
    if no_nll:
        samples.loc[: no_nll - 1, "sequence_nll"] = np.nan
    row = {"run_id": "r1", "judge": "j", "auroc_sequence_nll_judge": 0.64, "brier_p_correct_human": np.nan}
    for c in CRITERIA:
        row |= {f"n_{c}": 0 if c == "human" else len(nll), f"acc_{c}": 0.7, f"acc_{c}_lo": 0.6, f"acc_{c}_hi": 0.8}
    return samples, pd.DataFrame([row])


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_nll_png_is_written_by_plot(tmp_path):
    samples, summary = tables()
    written = plot(samples, summary, tmp_path, "r1 / j")
    assert tmp_path / "nll.png" in written
    width, height = png_size(tmp_path / "nll.png")
    assert (width, height) == (7 * 110, 4 * 110)


def test_both_classes_are_drawn_as_outlines_over_fills_on_the_same_bins(ax):
    samples, summary = tables()
    assert draw_nll(ax, samples, summary.iloc[0], "r1 / j")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["judged correct (n=79)", "judged incorrect (n=21)"]
    assert "3 invalid verdicts" in legend.get_title().get_text()

    outlines = [p for p in ax.patches if not p.get_fill()]
    fills = [p for p in ax.patches if p.get_fill()]
    assert len(outlines) == 2 and len(fills) == 2
    for label, patch in zip((CORRECT, INCORRECT), outlines):
        color, _ = NLL_STYLE[label]
        assert mcolors.to_hex(patch.get_edgecolor()) == color.lower()
        assert patch.get_linewidth() >= 2
    assert outlines[0].get_linestyle() != outlines[1].get_linestyle()
    assert all(0 < f.get_facecolor()[3] <= 0.3 for f in fills), "the fills are light, so the outlines stay visible"
    xs = [sorted({round(x, 9) for x in p.get_xy()[:, 0]}) for p in outlines]
    assert xs[0][0] == xs[1][0] and xs[0][-1] == xs[1][-1], "one set of bins for both classes"
    heights = [p.get_xy()[:, 1].max() for p in outlines]
    assert heights[0] > 0 and heights[1] > 0


def test_answers_without_an_nll_are_left_out_and_said(ax):
    samples, summary = tables(correct=10, incorrect=5, invalid=0, no_nll=2)
    assert draw_nll(ax, samples, summary.iloc[0], "t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["judged correct (n=8)", "judged incorrect (n=5)"]
    assert ax.get_legend().get_title().get_text() == "left out: 2 without an NLL"


def test_one_class_only_and_no_auroc(ax):
    samples, summary = tables(correct=6, incorrect=0, invalid=1)
    summary["auroc_sequence_nll_judge"] = np.nan
    assert draw_nll(ax, samples, summary.iloc[0], "t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["judged correct (n=6)"]
    assert "n/a" in ax.get_title() and "1 invalid verdict" in ax.get_legend().get_title().get_text()


def test_no_nll_figure_without_judged_answers_that_have_an_nll(tmp_path):
    samples, summary = tables(correct=0, incorrect=0, invalid=4)
    assert nll_figure(samples, summary.iloc[0], tmp_path, "t") == []
    samples, summary = tables(correct=3, incorrect=2, invalid=0)
    samples["sequence_nll"] = np.nan
    assert nll_figure(samples, summary.iloc[0], tmp_path, "t") == []
    assert not (tmp_path / "nll.png").exists()


LONG = "2026-12-05_factoids_SmolLM2-135M-Instruct_with-a-long-suffix / llama70b-8bit-with-a-long-judge-name"


def title_inside(fig, ax) -> bool:
    fig.tight_layout()
    fig.canvas.draw()
    box, page = ax.title.get_window_extent(), fig.bbox
    return page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1


def test_a_long_title_stays_inside_the_figure(ax):
    """nll.png's title (with its AUROC at the end) was cut at the right edge for a long run id and judge name:
    set as one line the box runs past the figure; wrapped, every line lies inside it."""
    samples, summary = tables()
    assert draw_nll(ax, samples, summary.iloc[0], LONG)
    assert "AUROC" in ax.get_title() and ax.get_title().count("\n") >= 1
    assert title_inside(ax.figure, ax)
    ax.set_title(ax.get_title().replace("\n", " "), fontsize=10)  # the old single line
    assert not title_inside(ax.figure, ax)


def test_a_short_title_stays_on_one_line(ax):
    samples, summary = tables()
    assert draw_nll(ax, samples, summary.iloc[0], "r1 / j")
    assert "\n" not in ax.get_title()


def test_every_figure_keeps_its_title_inside(tmp_path, monkeypatch):
    import pipeline.figures as figures

    inside = {}
    real = figures.save

    def checked(fig, path):
        inside[path.name] = title_inside(fig, fig.axes[0])
        return real(fig, path)

    monkeypatch.setattr(figures, "save", checked)
    samples, summary = tables()
    samples["human_label"] = (samples["judge_p_correct"] > 0.3).astype(float)
    summary["brier_p_correct_human"] = 0.2
    plot(samples, summary, tmp_path, LONG, threshold=0.5)
    assert inside == {"accuracy.png": True, "p_correct.png": True, "nll.png": True, "reliability.png": True}


def test_p_correct_shows_every_answer_and_the_labelled_ones_by_label_with_the_thresholds(ax):
    samples, summary = tables()
    samples.loc[:39, "human_label"] = (samples.loc[:39, "judge_p_correct"] > 0.4).astype(float)
    summary["threshold_max_kappa"] = 0.37
    assert draw_p_correct(ax, samples, summary.iloc[0], "r1 / j", 0.5)
    right = int((samples.human_label == 1).sum())
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["every answer (n=103)", f"human label: correct (n={right})",
                     f"human label: incorrect (n={40 - right})", "judge threshold 0.5",
                     "max-kappa threshold 0.37 (human labels)"]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.5, 0.37]
    outlines = [p for p in ax.patches if not p.get_fill()]
    for value, patch in zip((1, 0), outlines):
        assert mcolors.to_hex(patch.get_edgecolor()) == P_STYLE[value][0].lower()
        xs = sorted({round(x, 9) for x in patch.get_xy()[:, 0]})
        assert xs[0] == 0 and xs[-1] == 1 and len(xs) == 21, "bins of 0.05 over [0, 1]"


def test_p_correct_counts_match_the_answers_in_each_bin(ax):
    samples = pd.DataFrame({"judge_p_correct": [0.01, 0.02, 0.51, 0.97, np.nan], "human_label": np.nan})
    row = pd.Series({"threshold_max_kappa": np.nan})
    assert draw_p_correct(ax, samples, row, "t", None)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["every answer (n=4)"]
    assert "1 without one left out" in ax.get_title() and not ax.get_lines()
    fill = ax.patches[0].get_xy()
    tops = {round(x, 2): y for x, y in fill if y > 0}
    assert tops[0.0] == 2 and tops[0.5] == 1 and tops[0.95] == 1


def test_no_p_correct_figure_for_a_generate_mode_judge(tmp_path):
    samples, summary = tables()
    samples["judge_p_correct"] = np.nan
    written = plot(samples, summary, tmp_path, "t", threshold=None)
    assert tmp_path / "p_correct.png" not in written and not (tmp_path / "p_correct.png").exists()
