"""Figures and tables for the notebooks and the README: every one a function of arrays or DataFrames.

Design choices:
- Each function takes plain arrays / DataFrames (what utils.dataset, utils.train and utils.evaluate
  return), draws one figure, returns the matplotlib Figure and, given `path`, also writes a PNG
  (`savefig(dpi, bbox_inches="tight")` through utils.runtime.files.atomic_write: a temporary file, then a
  rename, so a failed save leaves the previous figure whole). Plotting never computes what a metric
  function already does: the confusion matrix comes from `evaluate.confusion`, the mistakes from
  `evaluate.most_confident_mistakes`.
- Backend: inside a Jupyter kernel figures are made through pyplot, so the inline backend shows them
  under the cell; anywhere else (run from a script or a test) they are plain `Figure`s on an Agg
  canvas, which needs no display and leaves the global backend and pyplot's figure list alone.
- Images are uint8 NHWC, drawn with nearest-neighbour interpolation: 32x32 pixels stay pixels.
- The confusion figure shows counts and row-normalized fractions side by side: counts say how many,
  the fractions compare classes (each row is a recall profile) whatever the split's class sizes.
- The robustness figure draws one line per corruption against severity with the clean accuracy as a
  dashed line: the gap to clean, and which kind of drift hurts most, read off at a glance.
- Tables go beside the figures as CSV (for code) and Markdown (for the README). The Markdown is
  written here rather than with pandas' `to_markdown`, which needs the optional `tabulate` package.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .evaluate import confusion, most_confident_mistakes
from .runtime.files import atomic_write, write_text

DPI = 150


# --------------------------------------------------------------------------------------------
# Figure plumbing
# --------------------------------------------------------------------------------------------
def in_notebook() -> bool:
    """True inside a Jupyter kernel (Jupyter, Colab, Kaggle, papermill, nbval)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def new_figure(figsize: tuple[float, float], layout: str | None = None) -> Figure:
    """A pyplot figure in a notebook (shown inline), else a standalone Figure on an Agg canvas."""
    if in_notebook():
        import matplotlib.pyplot as plt
        return plt.figure(figsize=figsize, layout=layout)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def image_axes(nrows: int, ncols: int, cell: float, gap_w: float, gap_h: float, top: float, left: float = 0.0):
    """A figure sized so that nrows x ncols square image axes are `cell` inches wide with fixed gaps (inches),
    `top` inches above them for titles and `left` inches for row labels: no stretched or drifting whitespace."""
    width = left + ncols * cell + (ncols - 1) * gap_w
    height = top + nrows * cell + (nrows - 1) * gap_h
    fig = new_figure((width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False,
                        gridspec_kw={"left": left / width, "right": 1.0, "bottom": 0.0, "top": 1 - top / height,
                                     "wspace": gap_w / cell, "hspace": gap_h / cell})
    return fig, axes


def finish(fig: Figure, path: str | Path | None = None, dpi: int = DPI) -> Figure:
    """Save `fig` as a PNG at `path` (if given) and return it."""
    if path is not None:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"), what="figure",
                     setting="figures_dir")
    return fig


def _show_image(ax, image: np.ndarray) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def sample_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int = 10,
                seed: int = 0, path: str | Path | None = None) -> Figure:
    """One row per class of `per_class` random images of it, the class name at the left."""
    rng = np.random.default_rng(seed)
    fig, axes = image_axes(len(classes), per_class, cell=0.9, gap_w=0.05, gap_h=0.05, top=0.45, left=1.1)
    for c, name in enumerate(classes):
        members = np.flatnonzero(labels == c)
        picked = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for j, ax in enumerate(axes[c]):
            if j < len(picked):
                _show_image(ax, images[picked[j]])
            else:
                ax.axis("off")
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
    fig.suptitle(f"{per_class} random training images per class", fontsize=13, y=1.0, va="top")
    return finish(fig, path)


def image_grid(images: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8,
               title: str | None = None, cell: float = 1.2, path: str | Path | None = None) -> Figure:
    """Images in rows of `ncols`, each with an optional small title (an id, true/predicted class...)."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    lines = max((t.count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    title_h = 0.2 * lines + (0.1 if lines else 0.0)        # room for each image's title, in inches
    fig, axes = image_axes(nrows, ncols, cell=cell, gap_w=0.15 if lines else 0.05, gap_h=title_h + 0.05,
                           top=title_h + (0.35 if title else 0.0))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _show_image(ax, images[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=12, y=1.0, va="top")
    return finish(fig, path)


def augmentation_grid(original: np.ndarray, augmented: np.ndarray, path: str | Path | None = None) -> Figure:
    """Training images (top row) and the same images as the training loader augments them (bottom row)."""
    n = len(original)
    fig, axes = image_axes(2, n, cell=0.9, gap_w=0.05, gap_h=0.05, top=0.45, left=1.0)
    for row, images in enumerate((original, augmented)):
        for ax, image in zip(axes[row], images):
            _show_image(ax, image)
    axes[0, 0].set_ylabel("original", rotation=0, ha="right", va="center", fontsize=10)
    axes[1, 0].set_ylabel("augmented", rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle("What the model sees in training", fontsize=12, y=1.0, va="top")
    return finish(fig, path)


def class_count_table(classes: Sequence[str], **labels: np.ndarray) -> pd.DataFrame:
    """Images per class (rows) for each labeled split given by keyword (columns), plus a total row."""
    table = pd.DataFrame({name: np.bincount(np.asarray(y), minlength=len(classes)) for name, y in labels.items()},
                         index=pd.Index(list(classes), name="class"))
    table.loc["total"] = table.sum()
    return table


def class_count_chart(counts: pd.DataFrame, title: str = "Images per class",
                      path: str | Path | None = None) -> Figure:
    """Grouped bars from a `class_count_table` (its total row is left out), one colour per column."""
    import seaborn as sns
    counts = counts.drop(index="total", errors="ignore")
    long = counts.reset_index(names="class").melt(id_vars="class", var_name="split", value_name="images")
    fig = new_figure((max(8.0, len(counts) * (0.6 + 0.3 * counts.shape[1])), 4.2))   # wider with more splits
    ax = fig.subplots()
    sns.barplot(data=long, x="class", y="images", hue="split" if counts.shape[1] > 1 else None, ax=ax)
    if counts.shape[1] == 1:
        ax.set_ylabel(f"images ({counts.columns[0]})")
    for bars in ax.containers:
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=1)
    ax.margins(y=0.12)
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(title)
    if counts.shape[1] > 1:
        ax.legend(title=None, ncols=counts.shape[1], loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  frameon=False)
    return finish(fig, path)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def training_curves(history: pd.DataFrame, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Loss, accuracy and learning rate per epoch from `fit`'s history; the epoch saved as best.pt is marked
    (the best val epoch, or the last one when there was no validation split). Without a validation split the
    test-batch monitor (history's monitor_loss / monitor_acc, at its epochs) is drawn as the monitor: it chose
    nothing, best.pt is the final weights. `title`: a heading over the three panels (e.g. the member)."""
    fig = new_figure((15, 4.2), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epoch = history["epoch"]
    has_val = bool(history["val_acc"].notna().any())
    monitor = history.dropna(subset=["monitor_acc"]) if "monitor_acc" in history else history.iloc[:0]
    saved = history.loc[history["val_acc"].idxmax()] if has_val else history.iloc[-1]
    for ax, key, label in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epoch, history[f"train_{key}"], marker="o", ms=3, label="train (augmented)")
        if has_val:
            ax.plot(epoch, history[f"val_{key}"], marker="o", ms=3, label="validation")
        if len(monitor):
            ax.plot(monitor["epoch"], monitor[f"monitor_{key}"], marker="s", ms=4, color="tab:purple",
                    label="monitor: test batch (chooses nothing)")
        ax.axvline(saved["epoch"], color="grey", ls=":", lw=1, label="best.pt")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("Loss")
    if has_val:
        ax_acc.set_title(f"Accuracy (best val {saved['val_acc']:.4f} at epoch {int(saved['epoch'])})")
    elif len(monitor):
        last = monitor.iloc[-1]
        ax_acc.set_title(f"Accuracy (no validation split; best.pt = epoch {int(saved['epoch'])}; "
                         f"monitor {last['monitor_acc']:.4f} at epoch {int(last['epoch'])})")
    else:
        ax_acc.set_title(f"Accuracy (no validation split; best.pt = epoch {int(saved['epoch'])})")
    ax_lr.plot(epoch, history["lr"], marker="o", ms=3, color="tab:green")
    ax_lr.set_title("Learning rate (at epoch end)")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=13)
    return finish(fig, path)


def lr_schedule(lrs: Sequence[float], steps_per_epoch: int, path: str | Path | None = None) -> Figure:
    """The planned learning rate per optimizer step (x axis in epochs), drawn before training."""
    fig = new_figure((7, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(lrs)) / steps_per_epoch, lrs, color="tab:green")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Planned learning rate: peak {max(lrs):.3g}, {len(lrs):,} steps")
    ax.grid(alpha=0.3)
    return finish(fig, path)


def robustness_figure(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Accuracy per corruption (one line each) against severity, the clean accuracy as a dashed line."""
    import seaborn as sns
    clean = float(table.loc[table["corruption"] == "clean", "accuracy"].iloc[0])
    rows = table[table["corruption"] != "clean"]
    fig = new_figure((9, 4.6), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(data=rows, x="severity", y="accuracy", hue="corruption", marker="o", ax=ax)
    ax.axhline(clean, color="black", ls="--", lw=1.2, label=f"clean {clean:.3f}")
    ax.set_xticks(sorted(rows["severity"].unique()))
    ax.set_ylim(0, max(1.0, clean) * 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Accuracy under corruptions (mean {rows['accuracy'].mean():.3f}, clean {clean:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return finish(fig, path)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], split: str = "test",
                     path: str | Path | None = None) -> Figure:
    """Counts and row-normalized confusion matrices side by side (rows: true class, columns: predicted)."""
    import seaborn as sns
    counts = confusion(y_true, y_pred, len(classes))
    rates = confusion(y_true, y_pred, len(classes), normalize="true")
    fig = new_figure((18, 7.6), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = ((counts, "d", "Blues", f"Counts ({len(y_true):,} {split} images)"),
              (rates, ".2f", "Blues", "Row-normalized (each row sums to 1; diagonal = recall)"))
    for ax, (matrix, fmt, cmap, title) in zip(axes, panels):
        sns.heatmap(matrix, annot=True, fmt=fmt, cmap=cmap, square=True, cbar_kws={"shrink": 0.75},
                    xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 8}, ax=ax)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        ax.tick_params(axis="y", rotation=0)
    accuracy = np.trace(counts) / max(1, counts.sum())
    fig.suptitle(f"Confusion matrix, {split} split (accuracy {accuracy:.4f})", fontsize=14)
    return finish(fig, path)


def mistakes_grid(images: np.ndarray, y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], k: int = 24,
                  ncols: int = 6, split: str = "test", path: str | Path | None = None) -> Figure:
    """The k wrong predictions the model was surest of, titled true class / predicted class (probability)."""
    idx = most_confident_mistakes(probs, y_true, k)
    pred = probs[idx].argmax(1)
    titles = [f"true: {classes[t]}\npred: {classes[p]} {probs[i, p]:.0%}" for i, t, p in zip(idx, y_true[idx], pred)]
    return image_grid(images[idx], titles, ncols=ncols, cell=1.5, path=path,
                      title=f"The {len(idx)} most confident mistakes on the {split} split")


def members_figure(y_true: np.ndarray, predictions: dict[str, np.ndarray], classes: Sequence[str],
                   table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Each member and the ensemble in one figure. Top: clean test accuracy and mean corruption accuracy (from
    `table`, utils.ensemble.comparison_table) as bars, and each model's per-class recall; bottom: each model's
    row-normalized confusion matrix (utils.evaluate.confusion). `predictions`: model label -> predicted classes."""
    import seaborn as sns
    labels = list(predictions)
    n = len(labels)
    fig = new_figure((max(12.0, 3.6 * n), 9.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.05])
    ax_bar, ax_cls = top.subplots(1, 2, width_ratios=[1, 1.6])
    x = np.arange(n)
    for offset, column, colour in ((-0.2, "test acc", "tab:blue"), (0.2, "mean corruption acc", "tab:orange")):
        values = [float(table.loc[label, column]) for label in labels]
        bars = ax_bar.bar(x + offset, values, width=0.4, color=colour, label=column)
        ax_bar.bar_label(bars, fmt="{:.3f}", fontsize=7, padding=1)
    ax_bar.set_xticks(x, labels, rotation=20)
    ax_bar.set_ylim(0, 1.05)
    ax_bar.set_ylabel("accuracy")
    ax_bar.set_title("Clean test and mean corruption accuracy")
    ax_bar.legend(loc="upper right", ncols=2, fontsize=8)
    rates = {label: confusion(y_true, pred, len(classes), normalize="true") for label, pred in predictions.items()}
    for label in labels:
        ensemble = label == labels[-1] and n > 1
        ax_cls.plot(range(len(classes)), np.diag(rates[label]), marker="o", ms=4, lw=2.2 if ensemble else 1.2,
                    color="black" if ensemble else None, label=label)
    ax_cls.set_xticks(range(len(classes)), classes, rotation=30)
    ax_cls.set_ylim(0, 1.02)
    ax_cls.set_ylabel("recall (test batch)")
    ax_cls.set_title("Per-class recall")
    ax_cls.grid(alpha=0.3)
    ax_cls.legend(fontsize=8)
    axes = np.atleast_1d(bottom.subplots(1, n))
    for ax, label in zip(axes, labels):
        sns.heatmap(rates[label], vmin=0, vmax=1, cmap="Blues", square=True, cbar=False, annot=n <= 2, fmt=".2f",
                    annot_kws={"fontsize": 6}, xticklabels=classes, yticklabels=classes if ax is axes[0] else False,
                    ax=ax)
        ax.set_title(f"{label}: confusion (rows: true class)", fontsize=10)
        ax.set_xlabel("predicted class")
        ax.tick_params(axis="x", rotation=90, labelsize=7)
        ax.tick_params(axis="y", rotation=0, labelsize=7)
    fig.suptitle(f"{n - 1 if n > 1 else 1} member(s) and their ensemble (mean of the members' probabilities)",
                 fontsize=13)
    return finish(fig, path)


# --------------------------------------------------------------------------------------------
# Tables beside the figures
# --------------------------------------------------------------------------------------------
def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub pipe table: integers with thousands separators, floats to `digits` decimals, numbers
    right-aligned, an index kept unless it is the default 0..n-1."""
    frame = table.reset_index() if table.index.name or not isinstance(table.index, pd.RangeIndex) else table
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]

    def cell(value) -> str:
        if isinstance(value, (bool, np.bool_)):
            return str(value)
        if isinstance(value, (int, np.integer)):
            return f"{value:,}"
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:,.{digits}f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) if str(c) != "index" else "" for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def save_table(table: pd.DataFrame, stem: str | Path, digits: int = 4) -> tuple[Path, Path]:
    """Write `stem`.csv and `stem`.md (Markdown, for the README); returns both paths."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    keep_index = bool(table.index.name) or not isinstance(table.index, pd.RangeIndex)
    write_text(csv, table.to_csv(index=keep_index), "table", "figures_dir")
    write_text(md, markdown_table(table, digits), "table", "figures_dir")
    return csv, md

