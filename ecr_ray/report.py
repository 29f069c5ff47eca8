"""Comparison tables (markdown) and charts (PNG) from {variant: metrics}: the recommender's
ablations and the generator's comparison."""
from __future__ import annotations

import io


def comparison_table(results: dict[str, dict], metrics: list[str]) -> str:
    """A row per variant; a metric with an interval (`intervals` of the variant) reads "value [low, high]"."""
    head = "| variant | " + " | ".join(metrics) + " |\n|---|" + "---:|" * len(metrics) + "\n"

    def cell(m: dict, k: str) -> str:
        value, interval = m.get(k), m.get("intervals", {}).get(k)
        return "n/a" if value is None else f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    return head + "".join(f"| {name} | " + " | ".join(cell(m, k) for k in metrics) + " |\n" for name, m in results.items())


def comparison_chart(results: dict[str, dict], panels: list[tuple[str, list[str]]]) -> bytes:
    """One bar group per metric, one bar per variant (with its 95% interval where it has one); a panel per
    (title, metrics) sharing a scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(11 * len(panels) ** 0.5, 4.5), squeeze=False)
    width = 0.8 / len(results)
    for ax, (title, metrics) in zip(axes[0], panels, strict=True):
        x = np.arange(len(metrics))
        for i, (name, m) in enumerate(results.items()):
            values = [m.get(k) or 0.0 for k in metrics]
            bounds = [m.get("intervals", {}).get(k) or (v, v) for k, v in zip(metrics, values, strict=True)]
            errors = [[max(v - lo, 0.0) for v, (lo, _) in zip(values, bounds)], [max(hi - v, 0.0) for v, (_, hi) in zip(values, bounds)]]
            ax.bar(x + i * width - 0.4 + width / 2, values, width, yerr=errors, capsize=1.5, error_kw={"linewidth": 0.6}, label=name)
        ax.set_xticks(x, metrics, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
    axes[0][0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=120)
    plt.close(fig)
    return out.getvalue()
