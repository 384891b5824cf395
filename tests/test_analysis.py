"""The analysis measures against scikit-learn, scipy and brute force; the figures; eval_features.py end to end
on untrained digits checkpoints (no training: the numbers are not the point, the plumbing is)."""
import itertools
import json
import math
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from lib import analysis, figures
from lib.models import build_model

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_analysis")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_labels(rng, n, k):
    return rng.randint(0, k, size=n)


# ---------------------------------------------------------------- clustering quality

@pytest.mark.parametrize("seed", range(6))
def test_nmi_and_ari_match_scikit_learn(seed):
    rng = np.random.RandomState(seed)
    n, ka, kb = rng.randint(5, 60), rng.randint(1, 6), rng.randint(1, 6)
    a = random_labels(rng, n, ka)
    b = np.where(rng.rand(n) < 0.6, a, random_labels(rng, n, kb))  # correlated, not identical
    assert analysis.nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b, average_method="geometric"), abs=1e-9)
    assert analysis.ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-9)


def test_nmi_edge_cases_and_label_names_do_not_matter():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert analysis.nmi(a, a + 7) == pytest.approx(1.0)              # same partition, other names
    assert analysis.nmi(a, [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)
    assert analysis.nmi([0] * 6, [1] * 6) == 1.0                      # scikit-learn's convention
    assert analysis.nmi([0] * 6, a) == 0.0
    assert analysis.nmi([0] * 6, a) == normalized_mutual_info_score([0] * 6, a, average_method="geometric")
    assert analysis.ari(a, [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)
    assert analysis.ari(np.arange(6), np.arange(6)) == adjusted_rand_score(np.arange(6), np.arange(6))
    # the paper's sqrt normalisation differs from scikit-learn's default arithmetic mean
    b = np.array([0, 0, 0, 1, 1, 1])
    assert analysis.nmi(a, b) != pytest.approx(normalized_mutual_info_score(a, b), abs=1e-6)
    with pytest.raises(ValueError):
        analysis.nmi([0, 1], [0, 1, 1])


def brute_force_accuracy(pred, true):
    # Every one-to-one map of clusters onto classes (clusters left over when there are more map nowhere).
    clusters, classes = sorted(set(pred)), sorted(set(true))
    best = 0
    slots = classes + [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(slots, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[p] == t for p, t in zip(pred, true)))
    return best / len(pred)


@pytest.mark.parametrize("seed", range(8))
def test_hungarian_accuracy_matches_brute_force(seed):
    rng = np.random.RandomState(seed)
    n = rng.randint(4, 25)
    pred, true = random_labels(rng, n, rng.randint(1, 5)), random_labels(rng, n, rng.randint(1, 5))
    assert analysis.hungarian_accuracy(pred, true) == pytest.approx(brute_force_accuracy(list(pred), list(true)))


def test_clustering_quality_of_a_relabelled_partition_is_perfect():
    true = np.repeat(np.arange(4), 5)
    q = analysis.clustering_quality(torch.as_tensor((true + 1) % 4), true)
    assert q == pytest.approx({"nmi": 1.0, "ari": 1.0, "acc": 1.0})


# ---------------------------------------------------------------- k-means with restarts

def separated_clusters(k, per, dim, noise, seed=0):
    """k well-separated groups of `per` distinct unit vectors around orthogonal directions."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:k]
    x = centres.repeat_interleave(per, 0) + noise * torch.randn(k * per, dim, generator=g)
    return F.normalize(x, dim=1), torch.arange(k).repeat_interleave(per)


def test_kmeans_labels_recover_separated_clusters_and_leave_the_global_rng_alone():
    x, y = separated_clusters(5, 20, 8, 0.05)
    x = x[torch.randperm(100, generator=torch.Generator().manual_seed(1))]  # the first rows are not one per group
    state = torch.get_rng_state()
    labels = analysis.kmeans_labels(x, 5, restarts=4, iters=20, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(labels, analysis.kmeans_labels(x, 5, restarts=4, iters=20, seed=3))  # repeatable
    assert labels.shape == (100,) and len(labels.unique()) == 5


def test_more_restarts_never_fit_worse():
    x = F.normalize(torch.randn(200, 6, generator=torch.Generator().manual_seed(0)), dim=1)

    def objective(labels):
        cent = F.normalize(torch.zeros(8, 6).index_add_(0, labels, x), dim=1)
        return (x * cent[labels]).sum().item()
    one = objective(analysis.kmeans_labels(x, 8, restarts=1, iters=30, seed=0))
    many = objective(analysis.kmeans_labels(x, 8, restarts=8, iters=30, seed=0))  # restart 0 is the same run
    assert many >= one - 1e-4


# ---------------------------------------------------------------- retrieval

@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_nearest_and_retrieval_match_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(30, 4, generator=g), dim=1)
    queries = F.normalize(torch.randn(11, 4, generator=g), dim=1)
    bank_labels, query_labels = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (11,), generator=g)
    sims, idx = analysis.nearest(queries, bank, k=5, chunk=chunk)
    for q in range(11):
        cos = [float(queries[q] @ bank[j]) for j in range(30)]
        assert idx[q].tolist() == sorted(range(30), key=lambda j: -cos[j])[:5]
    expected = np.mean([int(bank_labels[max(range(30), key=lambda j: float(queries[q] @ bank[j]))]) == int(query_labels[q])
                        for q in range(11)])
    assert analysis.retrieval_top1(queries, query_labels, bank, bank_labels, chunk) == pytest.approx(expected)


def brute_force_cross_view(f, f2):
    hits = 0
    for i in range(len(f)):
        own = float(f[i] @ f2[i])
        hits += all(own > float(f[i] @ f2[j]) for j in range(len(f)) if j != i)
    return hits / len(f)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_cross_view_retrieval_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(25, 3, generator=g), dim=1)
    f2 = F.normalize(f + 0.6 * torch.randn(25, 3, generator=g), dim=1)  # some hits, some misses
    r = analysis.cross_view_retrieval(f, f2, chunk)
    assert r == pytest.approx(brute_force_cross_view(f, f2))
    assert 0 < r < 1


def test_cross_view_retrieval_counts_ties_as_misses():
    same = F.normalize(torch.ones(6, 3), dim=1)  # a collapsed network
    assert analysis.cross_view_retrieval(same, same) == 0.0
    f = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)  # images 1 and 2 coincide
    assert analysis.cross_view_retrieval(f, f) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- selection score

def test_selection_score_is_one_for_exact_copies_of_separated_clusters():
    f, _ = separated_clusters(4, 25, 6, 0.03)
    s = analysis.selection_score(f, f.clone(), k=4, restarts=3, iters=20)
    assert s == pytest.approx({"nmi": 1.0, "r": 1.0, "score": 1.0})


def test_selection_score_is_near_chance_for_random_features():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(400, 16, generator=g), dim=1)
    f2 = F.normalize(torch.randn(400, 16, generator=g), dim=1)  # the two "views" share nothing
    s = analysis.selection_score(f, f2, k=10, restarts=2, iters=20)
    assert s["r"] < 0.02          # chance is 1/400
    assert s["nmi"] < 0.1         # chance NMI of two independent 10-way partitions of 400 items
    assert s["score"] < 0.002


def test_selection_score_drops_when_views_disagree():
    f, _ = separated_clusters(4, 25, 6, 0.03)
    shuffled = f[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    s = analysis.selection_score(f, shuffled, k=4, restarts=3, iters=20)
    assert s["score"] < 0.2


# ---------------------------------------------------------------- similarities and ranking

def test_pair_similarities_match_brute_force():
    g = torch.Generator().manual_seed(0)
    f, f2 = F.normalize(torch.randn(5, 3, generator=g), dim=1), F.normalize(torch.randn(5, 3, generator=g), dim=1)
    pos, neg, diff = analysis.pair_similarities(f, f2)
    a = (f @ f2.t()).numpy()
    assert np.allclose(pos, [a[i, i] for i in range(5)])
    assert np.allclose(neg, [a[i, j] for i in range(5) for j in range(5) if j != i])
    assert np.allclose(diff, [a[i, i] - a[i, j] for i in range(5) for j in range(5) if j != i])


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.RandomState(seed)
    a, b = rng.randint(0, 5, size=12).astype(float), rng.rand(12)
    b[3] = b[7]
    assert analysis.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert analysis.spearman(b, 2 * b + 1) == pytest.approx(1.0)
    assert analysis.spearman(b, -b) == pytest.approx(-1.0)


def test_spearman_undefined_cases_are_nan():
    assert math.isnan(analysis.spearman([1.0], [2.0]))
    assert math.isnan(analysis.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


# ---------------------------------------------------------------- figures

def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_tsne_figure_has_one_panel_per_run(tmp_path):
    g = np.random.RandomState(0)
    features, labels = g.randn(40, 5), np.arange(40) % 4
    panels = [(f"run {i}", figures.tsne_2d(features + i, seed=0)) for i in range(3)]
    assert panels[0][1].shape == (40, 2)
    fig = figures.tsne_figure(panels, labels, ["a", "b", "c", "d"])
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == ["run 0", "run 1", "run 2"]
    figures.save(fig, tmp_path / "t.png")
    assert is_png(tmp_path / "t.png")


def test_retrieval_figure_frames_and_layout(tmp_path):
    q, k = 3, 8
    queries = np.random.rand(q, 6, 6)
    labels = np.array([0, 1, 2])
    good = (np.random.rand(q, k, 6, 6), np.tile(labels[:, None], (1, k)))        # every neighbour right
    bad = (np.random.rand(q, k, 6, 6), np.tile((labels[:, None] + 1) % 3, (1, k)))  # every neighbour wrong
    fig = figures.retrieval_figure(queries, labels, [("NPID", *bad), ("CLD", *good)], ["cat", "dog", "cow"])
    assert len(fig.axes) == q * (1 + 2 * k)
    assert {ax.get_ylabel() for ax in fig.axes[::1 + 2 * k]} == {"cat", "dog", "cow"}
    axes = np.array(fig.axes).reshape(q, 1 + 2 * k)
    colour = lambda ax: matplotlib.colors.to_hex(ax.spines["top"].get_edgecolor())  # noqa: E731
    assert {colour(ax) for ax in axes[:, 1:1 + k].ravel()} == {figures.WRONG}
    assert {colour(ax) for ax in axes[:, 1 + k:].ravel()} == {figures.CORRECT}
    assert not axes[0, 0].spines["top"].get_visible()  # the query has no frame
    figures.save(fig, tmp_path / "r.png")
    assert is_png(tmp_path / "r.png")
    assert matplotlib.image.imread(tmp_path / "r.png").shape[1] > matplotlib.image.imread(tmp_path / "r.png").shape[0]


def test_similarity_and_curves_figures(tmp_path):
    rng = np.random.RandomState(0)
    sims = {f: (rng.rand(10), rng.rand(90), rng.rand(90)) for f in ("f_I", "backbone")}
    fig = figures.similarity_figure([("NPID", sims), ("CLD", sims)])
    assert len(fig.axes) == 6
    assert all(len(ax.patches) == 2 for ax in fig.axes)  # one histogram per run in every panel
    figures.save(fig, tmp_path / "s.png")
    assert is_png(tmp_path / "s.png")
    records = [{"epoch": e, "loss": 9 - e, "loss_ins": 8 - e, "loss_cld": 1, "group_acc": 0.1 * e,
                **({"knn_top1": 50 + e} if e % 2 == 0 else {})} for e in range(1, 5)]
    fig = figures.curves_figure([("a", records), ("b", records)])
    assert len(fig.axes) == len(figures.CURVES)
    knn_panel = fig.axes[-1]
    assert [list(line.get_xdata()) for line in knn_panel.lines] == [[2, 4], [2, 4]]
    figures.save(fig, tmp_path / "c.png")
    assert is_png(tmp_path / "c.png")


# ---------------------------------------------------------------- eval_features.py

CONFIG = {"dataset": "digits", "data": None, "subset": None, "arch": "resnet20", "image_size": 8, "dim": 16,
          "instance_head": "linear", "group_head": "linear", "mlp": False, "lam": 1.0, "ins_t": 0.1, "cld_t": 0.2,
          "aug": "default", "erasing": False}


def untrained_checkpoint(folder, seed, **changes):
    config = {**CONFIG, **changes}
    torch.manual_seed(seed)
    model = build_model(config, 1)
    os.makedirs(folder, exist_ok=True)
    torch.save({"config": config, "model": model.state_dict(), "epoch": 0}, os.path.join(folder, "last.pth"))
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"epoch": 1, "loss": 3.0, "loss_ins": 2.0, "loss_cld": 1.0, "group_acc": 0.2,
                            "knn_top1": 60.0}) + "\n")
    return os.path.join(folder, "last.pth")


def run_script(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "eval_features.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


FAST = ["--workers", 0, "--restarts", 2, "--kmeans-iters", 10, "--selection-images", 150, "--tsne-images", 60,
        "--grid-queries", 3, "--hist-images", 50]


def test_three_features_come_from_one_forward_and_f_i_is_the_evaluation_feature():
    import eval_features
    torch.manual_seed(0)
    model = build_model(CONFIG, 1).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        parts = eval_features.split_features(eval_features.all_features(model)(x), model)
        assert torch.allclose(parts["f_I"], model.embed(x), atol=1e-6)
        (f_i, f_g), = model(x)
        assert torch.allclose(parts["f_G"], f_g, atol=1e-6)
        assert torch.allclose(parts["backbone"], F.normalize(model.backbone(x), dim=1), atol=1e-6)


def test_eval_features_end_to_end(tmp_path):
    a = untrained_checkpoint(tmp_path / "cld", 0)
    b = untrained_checkpoint(tmp_path / "npid", 1, lam=0.0)
    r = run_script("--ckpt", a, b, *FAST, "--figures", tmp_path / "figs")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 3
    cld, npid, ranking = lines
    assert set(cld["features"]) == {"backbone", "f_I", "f_G"} and set(npid["features"]) == {"backbone", "f_I"}
    for metrics in cld["features"].values():
        assert set(metrics) == {"retrieval_top1", "nmi", "knn_top1", "cluster_acc", "ari"}
        assert 0 <= metrics["nmi"] <= 100 and 0 <= metrics["retrieval_top1"] <= 100
    s = cld["selection"]["f_I"]
    assert s["score"] == pytest.approx(s["nmi"] * s["r"], abs=1e-3)
    assert cld["selection_images"] == 150 and cld["label_clusters"] == 10 and cld["test_images"] == 360
    assert [row["run"] for row in ranking["ranking"]] and set(ranking["spearman"]) == {"score_vs_knn", "nmi_vs_knn",
                                                                                       "r_vs_knn"}
    assert "R(f,Y)" in r.stderr  # the table
    for name in ("tsne.png", "retrieval.png", "similarity.png", "curves.png"):
        assert is_png(tmp_path / "figs" / name), name


def test_eval_features_kmeans_k_flags(tmp_path, capsys):
    import eval_features
    a = untrained_checkpoint(tmp_path / "one", 0)
    eval_features.command_line([str(v) for v in ("--ckpt", a, *FAST, "--clusters", 3, "--selection-clusters", 5,
                                        "--features", "f_I")])
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (line["label_clusters"], line["selection_clusters"]) == (3, 5)
    assert list(line["features"]) == ["f_I"]


def error_of(argv, capsys):
    """eval_features.command_line in this process: the one-line message it exits with."""
    import eval_features
    with pytest.raises(SystemExit) as e:
        eval_features.command_line([str(a) for a in argv])
    assert e.value.code != 0
    message = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message
    return message


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    assert "does not exist" in error_of(["--ckpt", tmp_path / "none.pth"], capsys)
    a = untrained_checkpoint(tmp_path / "one", 0)
    assert "none.pth does not exist" in error_of(["--ckpt", a, tmp_path / "none.pth"], capsys)
    assert capsys.readouterr().out == ""  # found before the first checkpoint was measured
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    assert "corrupt" in error_of(["--ckpt", tmp_path / "bad.pth"], capsys)
    assert "invalid choice" in error_of(["--ckpt", "x.pth", "--features", "f_X"], capsys)
    assert "--selection-images must be positive" in error_of(["--ckpt", "x.pth", "--selection-images", 0], capsys)
    assert "--names gives 1 names for 2" in error_of(["--ckpt", "x.pth", "y.pth", "--names", "a"], capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot be created" in error_of(["--ckpt", a, "--figures", blocker / "sub"], capsys)
    assert "--curves" in error_of(["--ckpt", a, "--curves", tmp_path], capsys)  # a folder without metrics.jsonl
    assert "--sigma must be finite and positive" in error_of(["--ckpt", a, "--sigma", "nan"], capsys)
    assert "--workers must be 0 or more" in error_of(["--ckpt", a, "--workers", -1], capsys)


def test_curves_are_named_like_their_checkpoints(tmp_path):
    import eval_features
    untrained_checkpoint(tmp_path / "run_a", 0)
    untrained_checkpoint(tmp_path / "run_b", 0)
    (tmp_path / "empty").mkdir()
    curves = eval_features.read_curves([(str(tmp_path / "run_a"), "NPID"), (str(tmp_path / "run_a"), "again"),
                                        (str(tmp_path / "run_b"), None), (str(tmp_path / "empty"), None)])
    assert [name for name, _ in curves] == ["NPID", "run_b"]
    assert curves[0][1][0]["knn_top1"] == 60.0
