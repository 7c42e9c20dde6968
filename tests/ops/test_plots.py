"""The corpus's plots read well: shows.png with and without seasons, at 1, 40 (every show
named) and 3,000 shows (names present, never "nan", never on top of each other, inside the
figure)."""

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from scribeflow.stages import shows


def _table(n: int, seasons: bool) -> pd.DataFrame:
    """A show table as the corpus step writes it; without seasons the column is empty (NaN),
    as a catalogue without `season` leaves it."""
    rng = np.random.default_rng(7)
    return pd.DataFrame({"series": [f"番組 {k}" for k in range(n)],
                         "season": [float(1 + k % 3) for k in range(n)] if seasons else [np.nan] * n,
                         "difficulty": rng.uniform(0.5, 4.8, n).round(2),
                         "chars_per_minute": rng.normal(330, 50, n).round(1)})


@pytest.mark.parametrize(("n", "seasons"), [(1, False), (1, True), (40, True), (3000, False), (3000, True)])
def test_shows_plot_names_read_well(n, seasons):
    import matplotlib.pyplot as plt

    fig = shows.figure(_table(n, seasons))
    try:
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_text()]
        names = [t.get_text() for t in labels]
        assert len(names) == (n if n <= 40 else 16), names  # every show, or the 8 hardest and 8 easiest
        assert not any("nan" in name for name in names), names
        assert all(name.startswith("番組 ") for name in names)
        assert all(name.endswith((" 1", " 2", " 3")) for name in names) == seasons, names  # "2", not "2.0"
        fig.canvas.draw()  # the positions as saved
        renderer = fig.canvas.get_renderer()
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the names, without their lines
        assert not [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
        page = fig.bbox
        assert all(page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1 for b in boxes)
        assert ax.get_title().endswith(f"({n:,} show{'' if n == 1 else 's'})")
    finally:
        plt.close(fig)
