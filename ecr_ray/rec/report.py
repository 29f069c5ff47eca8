"""The ablation table (markdown) and chart (PNG) from {variant: metrics}."""
from __future__ import annotations

import io


def ablation_table(results: dict[str, dict], metrics: list[str]) -> str:
    head = "| variant | " + " | ".join(metrics) + " |\n|---|" + "---:|" * len(metrics) + "\n"
    cell = lambda v: "n/a" if v is None else f"{v:.4f}"
    return head + "".join(f"| {name} | " + " | ".join(cell(m.get(k)) for k in metrics) + " |\n" for name, m in results.items())


def ablation_chart(results: dict[str, dict], metrics: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(results)
    x = np.arange(len(metrics))
    for i, (name, m) in enumerate(results.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [m.get(k) or 0.0 for k in metrics], width, label=name)
    ax.set_xticks(x, metrics)
    ax.set_ylabel("dev split")
    ax.set_title("Recommender ablations (dev split)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=120)
    plt.close(fig)
    return out.getvalue()
