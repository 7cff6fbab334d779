"""Why TDE helps or not on the demo corpus: per Causal Norm system, how strongly the features lean toward the
head direction, where wrong predictions go, and TDE's effect as alpha grows (on the iden *test* split, for
diagnosis only: the demo table's alpha is chosen on the val split) with x_bar as trained and with x_bar
replaced by the plain mean of all training embeddings (the mu -> 1 limit of the moving average).

Usage: python tde_diagnostics.py OUT_DIR SYSTEM [SYSTEM ...]   (OUT_DIR as given to recipes/mini/run.sh --out)
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from spkcausal.data.datadir import train_counts
from spkcausal.data.embeddings import EmbeddingStore, class_labels
from spkcausal.data.longtail import shot_groups
from spkcausal.inference.tde import mean_head_cosine
from spkcausal.nn.assemble import assemble, head_logits
from spkcausal.scoring.metrics import confusion_summary, shot_group_accuracy

MANY, FEW = 30, 10
ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def _acc(y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> str:
    r = shot_group_accuracy(y, pred, counts, MANY, FEW)
    return f"{100 * r['many']:5.1f} {100 * r['medium']:5.1f} {100 * r['few']:5.1f} {100 * r['mean_per_class']:5.1f}"


def main(out: str, systems: list[str]) -> None:
    """Print the diagnostics of each system."""
    train_dir, test_dir = f"{out}/data/vox1_iden_train", f"{out}/data/vox1_iden_test"
    for name in systems:
        e = f"{out}/exp/{name}"
        trained = assemble(f"{e}/avg_model.pt", with_model=False)
        counts = train_counts(train_dir, trained.speakers)
        groups = shot_groups(counts, MANY, FEW)
        xt, yt = class_labels(EmbeddingStore.open(f"{e}/emb/vox1_iden_train"), train_dir, trained.speakers)
        x, y = class_labels(EmbeddingStore.open(f"{e}/emb/vox1_iden_test"), test_dir, trained.speakers)
        pred = head_logits(trained, x).argmax(1)
        conf = confusion_summary(y, pred, counts, MANY, FEW)
        share = {g: 100 * float(np.mean(groups[pred] == g)) for g in ("many", "medium", "few")}
        print(f"== {name} ({trained.config['head']['name']}, K={trained.config['head'].get('num_heads', '-')}, "
              f"s={trained.config['head'].get('scale')})")
        fit = _acc(yt, head_logits(trained, xt).argmax(1), counts)
        print(f"  fit on its own training utterances (many/medium/few/overall %): {fit}")
        print(f"  test predictions falling in many/medium/few classes (%): {share['many']:.1f} / {share['medium']:.1f}"
              f" / {share['few']:.1f} (classes: {100 * np.mean(groups == 'many'):.0f} / "
              f"{100 * np.mean(groups == 'medium'):.0f} / {100 * np.mean(groups == 'few'):.0f})")
        print(f"  wrong Few predictions that name a Many speaker: {100 * conf['few']['many']:.1f}% of Few test "
              "utterances")
        w = trained.head.weight.detach().numpy()
        wn = np.linalg.norm(w, axis=1)
        print("  class-weight norm by group (many/medium/few): " + " / ".join(
            f"{wn[groups == g].mean():.2f}" for g in ("many", "medium", "few")))
        if not trained.is_causal:
            continue
        k = trained.head.num_heads
        xbar = trained.head.mean_feature.numpy()
        ratio = np.linalg.norm(xt.mean(0)) / np.linalg.norm(xt, axis=1).mean()
        print(f"  mean cos(x^k, d^k): train {mean_head_cosine(xt, xbar, k):.3f}, test "
              f"{mean_head_cosine(x, xbar, k):.3f}; ||mean x|| / mean ||x|| = {ratio:.3f}")
        for label, mean in (("x_bar as trained", xbar), ("x_bar = mean of all training embeddings", xt.mean(0))):
            trained.head.mean_feature.copy_(torch.from_numpy(mean.astype(np.float32)))
            print(f"  TDE on iden test, {label} (alpha: many medium few overall %):")
            for a in ALPHAS:
                print(f"    {a:3.1f}: {_acc(y, head_logits(trained, x, tde_alpha=a).argmax(1), counts)}")
        trained.head.mean_feature.copy_(torch.from_numpy(xbar))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
