"""The paper's analysis figures as PNG files (matplotlib, Agg backend: no display needed).

Each builder takes plain arrays, returns the matplotlib Figure (so a caller can count its panels), and
`save` writes and closes it. Every panel carries a title and axis labels, and every figure names its runs.
  * tsne_figure: t-SNE of f_I per run, coloured by class (Fig. 4);
  * retrieval_figure: queries and their top neighbours under two runs, green / red frames (Figs. 5, A.3);
  * similarity_figure: positive, negative and difference cosine histograms per feature (Fig. 6);
  * curves_figure: loss parts, group accuracy and kNN top-1 per epoch from metrics.jsonl records.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

CORRECT, WRONG = "#1a9641", "#d7191c"


def save(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def tsne_2d(features, seed=0):
    """[N, D] -> [N, 2] t-SNE embedding (scikit-learn; perplexity capped for tiny N)."""
    from sklearn.manifold import TSNE
    n = len(features)
    perplexity = max(1.0, min(30.0, (n - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(np.asarray(features))


def tsne_figure(panels, labels, class_names, title="t-SNE of f_I on test images"):
    """panels: [(run name, points [N, 2])], one panel each, side by side; labels [N] colour the points."""
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax, (name, points) in zip(axes[0], panels):
        for c, cname in enumerate(class_names):
            keep = labels == c
            ax.scatter(points[keep, 0], points[keep, 1], s=4, color=cmap(c % cmap.N), label=cname)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
    # One legend beside the last panel: the colours are the same in every panel.
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, fontsize=8, title="class")
    fig.suptitle(f"{title} ({len(labels)} images, colour = class)")
    return fig


def _show(ax, image, colour=None):
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_color(colour)
            spine.set_linewidth(3)


def retrieval_figure(queries, query_labels, runs, class_names=None):
    """queries: images [Q, H, W(, 3)] in 0..1 with labels [Q] (named by class_names, if given);
    runs: [(name, neighbour images [Q, k, H, W(, 3)], neighbour labels [Q, k])] for two (or more) runs. One row per query: the query, then each run's k
    neighbours, framed green when their class is the query's and red otherwise. Rows are sorted by how
    many neighbours the first run gets right, worst first, as the paper sorts by NPID's performance."""
    query_labels = np.asarray(query_labels)
    order = np.argsort([(np.asarray(lab) == y).sum() for lab, y in zip(runs[0][2], query_labels)], kind="stable")
    k = len(runs[0][2][0])
    cols = 1 + k * len(runs)
    fig, axes = plt.subplots(len(order), cols, figsize=(0.75 * cols + 0.3 * len(runs), 0.8 * len(order) + 0.6),
                             squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.08})
    for row, q in enumerate(order):
        _show(axes[row, 0], queries[q])
        label = class_names[query_labels[q]] if class_names is not None else f"class {query_labels[q]}"
        axes[row, 0].set_ylabel(label, fontsize=7)
        for r, (_, images, labels) in enumerate(runs):
            for j in range(k):
                colour = CORRECT if labels[q][j] == query_labels[q] else WRONG
                _show(axes[row, 1 + r * k + j], images[q][j], colour)
    axes[0, 0].set_title("query", fontsize=8)
    for r, (name, _, _) in enumerate(runs):
        axes[0, 1 + r * k + (k - 1) // 2].set_title(f"{name}: top {k}", fontsize=8, loc="left")
    fig.suptitle("Nearest training images by cosine of f_I (green: same class as the query, red: another)",
                 fontsize=9)
    return fig


def similarity_figure(runs, features=("f_I", "backbone")):
    """runs: [(name, {feature: (positives, negatives, differences)})]; one row per feature, columns
    positive pairs A_ii, negative pairs A_ij (j != i), differences A_ii - A_ij, one histogram per run."""
    titles = ("positive pairs: cos(f(x_i), f(x'_i))", "negative pairs: cos(f(x_i), f(x'_j)), j != i",
              "difference: A_ii - A_ij")
    fig, axes = plt.subplots(len(features), 3, figsize=(13, 3.3 * len(features)), squeeze=False)
    for row, feature in enumerate(features):
        for col in range(3):
            ax = axes[row, col]
            for name, sims in runs:
                values = np.asarray(sims[feature][col])
                ax.hist(values, bins=60, density=True, histtype="step", linewidth=1.5,
                        label=f"{name} (mean {values.mean():.2f})")
            ax.set_title(f"{feature}: {titles[col]}", fontsize=9)
            ax.set_xlabel("cosine similarity" if col < 2 else "similarity difference")
            ax.set_ylabel("density")
            ax.legend(fontsize=7)
    fig.suptitle("Cosine similarities between two augmented views (Fig. 6)")
    fig.tight_layout()
    return fig


CURVES = (("loss", "total loss"), ("loss_ins", "instance loss"), ("loss_cld", "CLD loss"),
          ("group_acc", "group accuracy"), ("knn_top1", "kNN top-1 (%)"))


def curves_figure(runs):
    """runs: [(name, [metrics.jsonl records])]; one panel per quantity, one line per run. Epochs without
    a value (the kNN monitor does not run every epoch) are skipped, and markers show which ran."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.6 * len(CURVES), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], CURVES):
        for name, records in runs:
            points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("Training curves (metrics.jsonl)")
    fig.tight_layout()
    return fig
