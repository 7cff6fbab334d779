#!/usr/bin/env python
"""Long-tailed handwritten digits: de-confounded training + TDE against the usual long-tail baselines.

scikit-learn's bundled digits (1,797 8x8 images, 10 classes, no download). Per seed: a balanced test set
(50 per class) and a balanced dev set (20 per class, used only to choose TDE's alpha and tau-norm's tau);
the training set keeps n_c = round(n_max * imbalance^(-r/9)) images of the class ranked r (a random class
order per seed), n_max = 100, so imbalance 50 gives 100 65 42 27 18 11 7 5 3 2. Shot groups by training
count: Many > 40, Medium 10-40, Few < 10 (the 100/20 thresholds of docs/design.md do not fit 10 classes of at
most 100 images). A 64-128-64 ReLU MLP is trained with SGD momentum 0.9 and a cosine schedule; every
method uses the same network, data and step count. Prints a markdown table of per-class-mean accuracy (%)
mean +- std over seeds; `--diagnose` adds TDE ablations (alpha curve, mu, K, feature sign).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from spkcausal.data.longtail import shot_groups
from spkcausal.data.samplers import build_sampler
from spkcausal.inference.decoupled import retrain_classifier, tau_normalize
from spkcausal.inference.tde import alpha_heuristic, mean_head_cosine, sweep_alpha, tde_logits
from spkcausal.nn.heads import build_head
from spkcausal.nn.losses import build_loss
from spkcausal.train.schedules import momentum_at

MANY, FEW = 40, 10
ALPHAS = [round(a, 2) for a in np.arange(0.0, 3.01, 0.25)]


def make_split(seed: int, imbalance: float, n_max: int = 100, n_test: int = 50, n_dev: int = 20):
    """Long-tailed train set, balanced dev and test sets, and the training count of each class."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    rank = rng.permutation(10)  # class rank[r] is the r-th most frequent
    counts = np.zeros(10, dtype=int)
    tr, dv, te = [], [], []
    for r, c in enumerate(rank):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = max(1, int(round(n_max * imbalance ** (-r / 9))))
        counts[c] = n
        te.append(idx[:n_test])
        dv.append(idx[n_test:n_test + n_dev])
        tr.append(idx[n_test + n_dev:n_test + n_dev + n])
    tr, dv, te = (np.concatenate(a) for a in (tr, dv, te))
    return (x[tr], y[tr]), (x[dv], y[dv]), (x[te], y[te]), counts


class MLP(nn.Module):
    """64 -> 128 -> D embedding; the final ReLU (on by default) makes features non-negative like pooled CNN maps."""

    def __init__(self, dim: int = 64, final_relu: bool = True):
        super().__init__()
        layers = [nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, dim)]
        self.net = nn.Sequential(*(layers + [nn.ReLU()] if final_relu else layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(train_set, counts, seed: int, head: str = "linear", head_kw: dict | None = None, loss: str = "ce",
          loss_kw: dict | None = None, sampler: str = "natural", epochs: int = 60, batch: int = 32, lr: float = 0.05,
          final_relu: bool = True):
    """Train MLP + head with SGD momentum on the long-tailed set; returns (model, head) in eval mode."""
    x, y = torch.from_numpy(train_set[0]), torch.from_numpy(train_set[1]).long()
    torch.manual_seed(seed)
    model = MLP(final_relu=final_relu)
    clf = build_head(head, 64, 10, **(head_kw or {}))
    crit = build_loss(loss, class_counts=counts, **(loss_kw or {}))
    params = list(model.parameters()) + list(clf.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    samp = build_sampler(sampler, y.numpy(), seed=seed)
    steps_per_epoch = math.ceil(len(samp) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    model.train()
    clf.train()
    for ep in range(epochs):
        if getattr(clf, "momentum_auto", False):  # head momentum "auto": the paper's per-epoch rule
            clf.momentum = momentum_at(opt.param_groups[0]["lr"])
        samp.set_epoch(ep)
        order = torch.from_numpy(samp.indices())
        for b in range(0, len(order), batch):
            idx = order[b:b + batch]
            out = clf(model(x[idx]), y[idx])
            step = crit(out, y[idx])
            opt.zero_grad(set_to_none=True)
            step.backward()
            opt.step()
            sched.step()
    return model.eval(), clf.eval()


@torch.no_grad()
def embed(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    """Embeddings of a whole array."""
    return model(torch.from_numpy(x))


def group_acc(pred: np.ndarray, y: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Many / Medium / Few / Overall as the mean of per-class accuracies (%) in each group."""
    per = np.array([(pred[y == c] == c).mean() for c in range(10)])
    groups = shot_groups(counts, many=MANY, few=FEW)
    out = {g.capitalize(): 100 * per[groups == g].mean() for g in ("many", "medium", "few")}
    out["Overall"] = 100 * per.mean()
    return out


def head_share(pred: np.ndarray, y: np.ndarray, counts: np.ndarray) -> float:
    """Of the misclassified Few-class test samples, the share (%) predicted as a Many class: the head bias."""
    groups = shot_groups(counts, many=MANY, few=FEW)
    wrong = (groups[y] == "few") & (pred != y)
    return 100 * float((groups[pred[wrong]] == "many").mean()) if wrong.any() else float("nan")


def acc_of(logits: torch.Tensor, y: np.ndarray) -> float:
    """Plain accuracy (balanced sets: equals the per-class mean)."""
    return float((logits.argmax(1).numpy() == y).mean())


def run_seed(seed: int, imbalance: float, epochs: int, diagnose: bool) -> tuple[dict, dict, dict]:
    """All methods on one seed: {method: group accuracies}, TDE facts, and the diagnostic rows."""
    tr, dv, te, counts = make_split(seed, imbalance)
    res, facts, diag = {}, {}, {}

    def score(name: str, model: nn.Module, logits_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        with torch.no_grad():
            pred = logits_fn(embed(model, te[0])).argmax(1).numpy()
        res[name] = group_acc(pred, te[1], counts)
        res[name]["Few errors -> Many"] = head_share(pred, te[1], counts)

    kw = {"epochs": epochs}
    ce_model, ce_head = train(tr, counts, seed, **kw)
    score("CE baseline", ce_model, ce_head)
    m, h = train(tr, counts, seed, head="cosine", head_kw={"scale": 16.0}, **kw)
    score("Cosine (s=16)", m, h)

    cn_kw = {"num_heads": 2, "tau": 16.0, "gamma": 1 / 32, "momentum": 0.9}
    cn_model, cn_head = train(tr, counts, seed, head="causal_norm", head_kw=cn_kw, **kw)
    score("Causal Norm (de-confound)", cn_model, cn_head)
    dev_emb, tr_emb = embed(cn_model, dv[0]), embed(cn_model, tr[0])
    sweep = sweep_alpha(lambda a: acc_of(tde_logits(cn_head, dev_emb, alpha=a), dv[1]), ALPHAS, maximize=True)
    a_heur = alpha_heuristic(tr_emb, cn_head.mean_feature, 2)
    facts.update(alpha_dev=sweep.best_alpha, alpha_heur=a_heur,
                 cos_train=mean_head_cosine(tr_emb, cn_head.mean_feature, 2))
    score("Causal Norm + TDE (alpha on dev)", cn_model, lambda e: tde_logits(cn_head, e, alpha=sweep.best_alpha))
    score("Causal Norm + TDE (alpha heuristic)", cn_model, lambda e: tde_logits(cn_head, e, alpha=a_heur))

    m, h = train(tr, counts, seed, sampler="class_balanced", **kw)
    score("Re-sampling (class-balanced)", m, h)
    m, h = train(tr, counts, seed, loss="inverse", **kw)
    score("Re-weighting (inverse freq.)", m, h)
    m, h = train(tr, counts, seed, loss="effective_number", loss_kw={"beta": 0.99}, **kw)
    score("Re-weighting (effective num., beta=0.99)", m, h)
    m, h = train(tr, counts, seed, loss="focal", loss_kw={"gamma": 2.0}, **kw)
    score("Focal (gamma=2)", m, h)

    crt = retrain_classifier(embed(ce_model, tr[0]), tr[1], 10, epochs=30, batch_size=32, lr=0.05, seed=seed)
    score("cRT (CE features, balanced)", ce_model, crt)
    dev_ce = embed(ce_model, dv[0])
    taus = [round(t, 2) for t in np.arange(0.0, 2.01, 0.25)]
    t_sweep = sweep_alpha(lambda t: acc_of(dev_ce @ tau_normalize(ce_head.weight.detach(), t).T, dv[1]), taus, True)
    w_tau = tau_normalize(ce_head.weight.detach(), t_sweep.best_alpha)
    score("tau-norm (CE, tau on dev)", ce_model, lambda e: e @ w_tau.T)
    facts["tau_dev"] = t_sweep.best_alpha

    if diagnose:
        diag.update(diagnostics(seed, tr, dv, te, counts, cn_model, cn_head, epochs))
    return res, facts, diag


def diagnostics(seed, tr, dv, te, counts, cn_model, cn_head, epochs) -> dict:
    """TDE ablations on one seed: fixed alphas, momentum mu, number of heads K, signed (no final ReLU) features."""
    out = {}
    emb = embed(cn_model, te[0])
    for a in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        out[f"CN K=2 mu=0.9, alpha={a}"] = group_acc(tde_logits(cn_head, emb, alpha=a).argmax(1).numpy(), te[1],
                                                    counts)
    variants = {"K=1": {"num_heads": 1}, "K=4": {"num_heads": 4}, "tau=8": {"tau": 8.0}, "tau=32": {"tau": 32.0},
                "mu=0.5": {"momentum": 0.5},
                "mu=0.99": {"momentum": 0.99}, "signed features (no final ReLU)": {"final_relu": False}}
    for label, v in variants.items():
        final_relu = v.pop("final_relu", True)
        hk = {"num_heads": 2, "tau": 16.0, "gamma": 1 / 32, "momentum": 0.9, **v}
        m, h = train(tr, counts, seed, head="causal_norm", head_kw=hk, epochs=epochs, final_relu=final_relu)
        dev_emb, te_emb = embed(m, dv[0]), embed(m, te[0])
        s = sweep_alpha(lambda a, h=h, d=dev_emb: acc_of(tde_logits(h, d, alpha=a), dv[1]), ALPHAS, True)
        out[f"CN {label}, alpha=0"] = group_acc(h(te_emb).argmax(1).numpy(), te[1], counts)
        out[f"CN {label} + TDE (alpha on dev)"] = group_acc(
            tde_logits(h, te_emb, alpha=s.best_alpha).argmax(1).numpy(), te[1], counts)
    return out


def momentum_study(seed: int, imbalance: float, epochs: int) -> dict[str, dict]:
    """Causal Norm with x_bar momentum fixed at 0.9 vs `auto` (same seed, data and steps), plain and with TDE."""
    tr, dv, te, counts = make_split(seed, imbalance)
    out = {}
    for mu in (0.9, "auto"):
        hk = {"num_heads": 2, "tau": 16.0, "gamma": 1 / 32, "momentum": mu}
        m, h = train(tr, counts, seed, head="causal_norm", head_kw=hk, epochs=epochs)
        dev_emb, te_emb = embed(m, dv[0]), embed(m, te[0])
        s = sweep_alpha(lambda a, h=h, d=dev_emb: acc_of(tde_logits(h, d, alpha=a), dv[1]), ALPHAS, True)
        out[f"CN mu={mu}"] = group_acc(h(te_emb).argmax(1).numpy(), te[1], counts)
        out[f"CN mu={mu} + TDE (alpha on dev)"] = group_acc(
            tde_logits(h, te_emb, alpha=s.best_alpha).argmax(1).numpy(), te[1], counts)
        out[f"CN mu={mu} + TDE (alpha on dev)"]["alpha"] = s.best_alpha
    return out


def paired_table(rows: dict[str, list[dict]], pairs: list[tuple[str, str]]) -> str:
    """Mean difference (a - b) over seeds with a 95% t-interval, per column: significant when it excludes 0."""
    from scipy import stats

    cols = ("Many", "Medium", "Few", "Overall")
    lines = ["| Difference | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for a, b in pairs:
        cells = []
        for c in cols:
            d = np.array([x[c] - y[c] for x, y in zip(rows[a], rows[b])])
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            lo, hi = d.mean() - half, d.mean() + half
            cells.append(f"{d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}]{' *' if lo > 0 or hi < 0 else ''}")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: dict[str, list[dict]]) -> str:
    """Markdown table of mean +- std over seeds."""
    cols = [c for c in ("Many", "Medium", "Few", "Overall", "Few errors -> Many") if c in next(iter(rows.values()))[0]]
    lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, accs in rows.items():
        cells = [f"{np.nanmean([a[c] for a in accs]):.1f} ± {np.nanstd([a[c] for a in accs]):.1f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every method on every seed and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--imbalance", type=float, default=50.0)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--diagnose", action="store_true", help="add TDE ablations (alpha, mu, K, feature sign)")
    p.add_argument("--momentum-study", action="store_true",
                   help="only Causal Norm with x_bar momentum 0.9 vs auto, with paired differences over seeds")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    if args.momentum_study:
        rows: dict[str, list[dict]] = {}
        for seed in range(args.seeds):
            for k, v in momentum_study(seed, args.imbalance, args.epochs).items():
                rows.setdefault(k, []).append(v)
            print(f"seed {seed} done ({time.time() - t0:.0f} s)", file=sys.stderr)
        print(f"Long-tailed digits, imbalance {args.imbalance:g}, {args.seeds} seeds: x_bar momentum 0.9 vs auto "
              "(1 - 0.1 min(50 lr, 1) per epoch); accuracy % (mean ± std)\n")
        print(table(rows))
        print("\nPaired differences over seeds (mean [95% t-interval]; * = interval excludes 0):\n")
        print(paired_table(rows, [("CN mu=auto", "CN mu=0.9"),
                                  ("CN mu=auto + TDE (alpha on dev)", "CN mu=0.9 + TDE (alpha on dev)")]))
        alphas = {k: [r["alpha"] for r in v] for k, v in rows.items() if "TDE" in k}
        print("\nalpha chosen on dev per seed: " + "; ".join(f"{k}: {v}" for k, v in alphas.items()))
        return 0
    rows: dict[str, list[dict]] = {}
    diag_rows: dict[str, list[dict]] = {}
    facts = []
    for seed in range(args.seeds):
        res, f, d = run_seed(seed, args.imbalance, args.epochs, args.diagnose)
        for k, v in res.items():
            rows.setdefault(k, []).append(v)
        for k, v in d.items():
            diag_rows.setdefault(k, []).append(v)
        facts.append(f)
        print(f"seed {seed} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    _, _, _, counts = make_split(0, args.imbalance)
    print(f"Long-tailed digits, imbalance {args.imbalance:g}, training counts per class rank: "
          f"{sorted(counts.tolist(), reverse=True)}; Many > {MANY}, Medium {FEW}-{MANY}, Few < {FEW}; "
          f"balanced test 50/class; {args.seeds} seeds; accuracy % (mean ± std)\n")
    print(table(rows))
    fmt = lambda k: ", ".join(f"{f[k]:.2f}" for f in facts)  # noqa: E731
    print(f"\nTDE alpha chosen on dev per seed: {fmt('alpha_dev')}; heuristic 1/mean cos: {fmt('alpha_heur')}; "
          f"mean cos(x^k, d^k) on train: {fmt('cos_train')}; tau-norm tau on dev: {fmt('tau_dev')}")
    if diag_rows:
        print("\nTDE diagnostics (test set, same seeds):\n")
        print(table(diag_rows))
    print(f"\nruntime {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
