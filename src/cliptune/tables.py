"""Plain-text tables of retrieval metrics for the console."""

from __future__ import annotations

COLUMNS = (
    ("i2t R@1", "i2t_r1"), ("R@5", "i2t_r5"), ("R@10", "i2t_r10"),
    ("t2i R@1", "t2i_r1"), ("R@5", "t2i_r5"), ("R@10", "t2i_r10"),
    ("rsum", "rsum"), ("i2t medr", "i2t_medr"), ("t2i medr", "t2i_medr"), ("loss", "loss"),
)
PERCENT = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}


def format_metrics_table(results: dict[str, dict[str, float]]) -> str:
    """One row per split; recalls in percent, as in the literature."""
    header = ["split"] + [title for title, _ in COLUMNS]
    rows = [header]
    for split, metrics in results.items():
        row = [split]
        for _, key in COLUMNS:
            value = metrics.get(key)
            if value is None:
                row.append("-")
            elif key in PERCENT:
                row.append(f"{100 * value:.1f}")
            else:
                row.append(f"{value:.1f}" if key != "loss" else f"{value:.3f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
