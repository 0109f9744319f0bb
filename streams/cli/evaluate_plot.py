"""``evaluate prequential --plot FILE``: the rolling hit rate over time, per source.

matplotlib is imported here only, when a plot is asked for (it is in the test
extras, not a runtime dependency).
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.prequential import PrequentialReport, rolling_hit_rate
from streams.errors import CliError

# A fiftieth of the tested events per rolling mean draws a readable line; fewer
# than this many events per point is noise.
MIN_WINDOW = 100
POINTS = 50


def plot_prequential(
    report: PrequentialReport, path: str, *, window: int | None = None, title: str = ""
) -> None:
    """One panel per track (new items, repeats when any), one line per source."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib") from None
    tracks = [(name, track) for name, track in report.timelines.items() if track.ts]
    if not tracks:
        raise CliError("nothing was tested: no plot to draw")
    fig, axes = plt.subplots(len(tracks), 1, figsize=(9, 3.6 * len(tracks)), squeeze=False)
    for ax, (name, track) in zip(axes[:, 0], tracks, strict=True):
        size = window or max(MIN_WINDOW, len(track.ts) // POINTS)
        when = [datetime.fromtimestamp(ts, UTC) for ts in track.ts]
        for source in track.sources:
            hits = track.hits(source)
            ax.plot(when, rolling_hit_rate(hits, size), linewidth=1.2,
                    label=f"{source} (HR@k {hits.mean():.3f})")
        ax.set_title(f"{title}: {name.replace('_', ' ')}, rolling hit rate over "
                     f"{size:,} tested events")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("event time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
