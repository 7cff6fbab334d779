"""Epoch samplers for long-tailed training: natural, class-balanced and square-root re-sampling, sharded by rank.

The order of an epoch is a pure function of (seed, epoch): every rank builds the same global order and takes
`order[rank::num_replicas]` (padded by wrapping so every rank gets the same count, like DistributedSampler).
`set_start(i)` / `state_dict()` let a resumed run continue from position i of its shard in the current epoch.
- natural: a random permutation of the data (each utterance once per epoch).
- class_balanced: each draw picks a class uniformly, then an utterance of it uniformly (with replacement).
- sqrt: like class_balanced but a class is picked with probability proportional to sqrt(n_c).
- progressive (Kang et al., ICLR 2020): like class_balanced with p_c(t) = (1 - t/T) n_c/N + (t/T) / C at the
  0-based epoch t of T (`epochs`): natural frequencies in the first epoch, moving linearly towards uniform.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ..registry import Registry

# Each scheme's unnormalised class-drawing weights from the per-class counts (float64) and the training
# progress t/T in [0, 1) of the epoch (only epoch-aware schemes such as 'progressive' look at it).
SAMPLERS: Registry[Callable[[np.ndarray, float], np.ndarray]] = Registry("sampler")
# Schemes whose epoch order is a permutation of the data (each utterance once), not class draws.
PERMUTATION_SCHEMES = ("natural",)
# Schemes whose class probabilities do not depend on the epoch.
STATIC_SCHEMES = ("natural", "class_balanced", "sqrt")


@SAMPLERS.register("natural")
def natural_weights(counts: np.ndarray, progress: float = 0.0) -> np.ndarray:
    """n_c: the data's own class frequencies (the epoch itself is a permutation, see global_order)."""
    return counts


@SAMPLERS.register("class_balanced")
def class_balanced_weights(counts: np.ndarray, progress: float = 0.0) -> np.ndarray:
    """1 for every class with data: classes drawn uniformly."""
    return (counts > 0).astype(np.float64)


@SAMPLERS.register("sqrt")
def sqrt_weights(counts: np.ndarray, progress: float = 0.0) -> np.ndarray:
    """sqrt(n_c): square-root re-sampling."""
    return np.sqrt(counts)


@SAMPLERS.register("progressive")
def progressive_weights(counts: np.ndarray, progress: float = 0.0) -> np.ndarray:
    """(1 - t/T) n_c / N + (t/T) / C over the classes with data (Kang et al.'s progressively balanced)."""
    has = (counts > 0).astype(np.float64)
    return (1.0 - progress) * counts / counts.sum() + progress * has / has.sum()


def epoch_progress(epoch: int, epochs: int) -> float:
    """t/T of a 0-based epoch t of T (clipped to [0, 1] for epochs past T, e.g. a longer resumed run)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return min(1.0, max(0.0, epoch / epochs))


def class_probabilities(counts: np.ndarray, name: str, epoch: int = 0, epochs: int = 1) -> np.ndarray:
    """Probability of drawing each class under a sampling scheme at a 0-based epoch of `epochs` (classes with
    no data get 0)."""
    p = SAMPLERS.get(name)(np.asarray(counts, dtype=np.float64), epoch_progress(epoch, epochs))
    return p / p.sum()


class LongTailSampler(Sampler[int]):
    """Deterministic, resumable, rank-sharded sampler; see the module docstring for the schemes."""

    def __init__(self, labels: Sequence[int] | np.ndarray, name: str = "natural", seed: int = 0,
                 num_samples: int | None = None, num_replicas: int = 1, rank: int = 0, epochs: int = 1):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-D sequence of class indices")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for num_replicas={num_replicas}")
        SAMPLERS.get(name)  # an unknown scheme fails here, before any work
        self.labels, self.name, self.seed = labels, name, int(seed)
        self.num_replicas, self.rank, self.epochs = int(num_replicas), int(rank), int(epochs)
        self.total = len(labels) if num_samples is None else int(num_samples)
        # Per-rank length is fixed for every epoch so the trainer's step arithmetic never changes.
        self.epoch_length = math.ceil(self.total / self.num_replicas)
        self.epoch, self.start = 0, 0
        classes, inverse = np.unique(labels, return_inverse=True)
        self._classes = classes
        # Utterances grouped by class: class c owns _by_class[_offsets[c] : _offsets[c] + _counts[c]].
        self._by_class = np.argsort(inverse, kind="stable")
        self._counts = np.bincount(inverse, minlength=len(classes))
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self.class_probs_at(0)  # a bad `epochs` fails here

    def class_probs_at(self, epoch: int) -> np.ndarray:
        """Class-drawing probabilities of an epoch (the same every epoch except for epoch-aware schemes)."""
        return class_probabilities(self._counts, self.name, epoch, self.epochs)

    @property
    def class_probs(self) -> np.ndarray:
        """Class-drawing probabilities of the current epoch."""
        return self.class_probs_at(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its order depends on (seed, epoch)); resets the start position to 0."""
        self.epoch, self.start = int(epoch), 0

    def set_start(self, index: int) -> None:
        """Skip the first `index` samples of this rank's shard in the current epoch (exact resume)."""
        if not 0 <= index <= self.epoch_length:
            raise ValueError(f"start {index} outside [0, {self.epoch_length}]")
        self.start = int(index)

    def state_dict(self) -> dict[str, Any]:
        """Position to save in a checkpoint."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "name": self.name,
                "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved position (the seed and scheme must match, or the order would differ; for an
        epoch-aware scheme the number of epochs too)."""
        if state.get("seed", self.seed) != self.seed or state.get("name", self.name) != self.name:
            raise ValueError(f"sampler state is for seed={state.get('seed')} name={state.get('name')!r}, "
                             f"this sampler is seed={self.seed} name={self.name!r}")
        if self.name not in STATIC_SCHEMES and state.get("epochs", self.epochs) != self.epochs:
            raise ValueError(f"sampler state is for epochs={state.get('epochs')}, this run has epochs={self.epochs} "
                             f"(the {self.name!r} schedule depends on train.epochs)")
        self.epoch = int(state["epoch"])
        self.set_start(int(state["start"]))

    def global_order(self) -> np.ndarray:
        """The whole epoch's order over all ranks, padded to epoch_length * num_replicas."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        if self.name in PERMUTATION_SCHEMES:
            reps = math.ceil(self.total / n)
            order = np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.total]
        else:
            cls = rng.choice(len(self._classes), size=self.total, p=self.class_probs)
            within = np.floor(rng.random(self.total) * self._counts[cls]).astype(np.int64)
            order = self._by_class[self._offsets[cls] + within]
        padded = self.epoch_length * self.num_replicas
        if padded > len(order):
            order = np.concatenate([order, order[: padded - len(order)]])
        return order

    def indices(self) -> np.ndarray:
        """This rank's shard of the current epoch from the start position on."""
        return self.global_order()[self.rank :: self.num_replicas][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        # What __iter__ yields, so a DataLoader's length stays right after set_start().
        return self.epoch_length - self.start


def build_sampler(name: str, labels: Sequence[int] | np.ndarray, seed: int = 0, num_samples: int | None = None,
                  num_replicas: int = 1, rank: int = 0, epochs: int = 1) -> LongTailSampler:
    """Build a sampler by registry name (`SAMPLERS`): 'natural', 'class_balanced', 'sqrt' or 'progressive'
    (which needs `epochs`, the run's train.epochs)."""
    return LongTailSampler(labels, name, seed, num_samples, num_replicas, rank, epochs)
