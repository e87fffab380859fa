"""Figures: matplotlib without a display, and PNGs written atomically (a killed job leaves none)."""

from __future__ import annotations

from pathlib import Path

from dfnas.runtime import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (jobs run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG through a temporary name, and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
