"""The suite's figure: speed-up against the family baseline and bandwidth as % of copy,
against size (``focalkit bench --plot``). Needs matplotlib (the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_suite"]


def plot_suite(doc: dict, path: Path) -> Path:
    """Speed-up vs the family baseline and bandwidth as % of copy, against size (fwd+bwd)."""
    from focalkit.demo.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple[str, str], list[dict]] = {}
    for r in doc["rows"]:
        if r["mode"] == "fwd+bwd":
            series.setdefault((r["impl"], r["dtype"]), []).append(r)
    names = sorted({impl for impl, _ in series})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: cmap(i) for i, name in enumerate(names)}  # one colour per impl, both panels
    for (impl, dtype), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: (r["classes"], r["numel"]))
        xs = [r["numel"] for r in rs]
        style = "-o" if dtype == "fp32" else "--s"
        kw = {"label": f"{impl} [{dtype}]", "markersize": 4, "color": colors[impl]}
        if impl != "copy":
            ax1.plot(xs, [r["ratio_vs_eager"] for r in rs], style, **kw)
        ax2.plot(xs, [r["pct_of_copy"] for r in rs], style, **kw)
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="logits",
        ylabel="speed-up vs eager baseline",
        title="fwd+bwd speed-up (family baseline = 1)",
    )
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax2.set(
        xscale="log",
        xlabel="logits",
        ylabel="% of copy bandwidth",
        title="achieved bandwidth (min bytes / time) as % of copy",
    )
    ax2.legend(fontsize=7, loc="best")
    fig.suptitle(f"focalkit bench: {doc['environment']['device_name']}, preset {doc['preset']}")
    return save_figure(fig, Path(path))
