"""What every figure the product draws shares: matplotlib without a screen, and fonts
for Japanese text."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen on servers and cluster nodes


def use_fonts() -> None:
    """Latin text in DejaVu Sans, Japanese (series titles, lemmas) in IPAex Gothic, which
    matplotlib-fontja ships: DejaVu has no kana or kanji (they would print as boxes)."""
    try:
        import matplotlib_fontja  # noqa: F401  (registers IPAexGothic with matplotlib)
    except ImportError:
        return
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", "IPAexGothic"]
