"""Epoch samplers for long-tailed training: natural, class-balanced and square-root re-sampling, sharded by rank.

The order of an epoch is a pure function of (seed, epoch): every rank builds the same global order and takes
`order[rank::num_replicas]` (padded by wrapping so every rank gets the same count, like DistributedSampler).
`set_start(i)` / `state_dict()` let a resumed run continue from position i of its shard in the current epoch.
- natural: a random permutation of the data (each utterance once per epoch).
- class_balanced: each draw picks a class uniformly, then an utterance of it uniformly (with replacement).
- sqrt: like class_balanced but a class is picked with probability proportional to sqrt(n_c).
- progressive (Kang et al., ICLR 2020): like class_balanced with p_c(t) = (1 - t/T) n_c/N + (t/T) / C at the
  0-based epoch t of T (`epochs`): natural frequencies in the first epoch, moving linearly towards uniform.
- episodic (`EpisodicSampler`): speaker-uniform batches of P = batch_size / K speakers x K utterances
  (`sampler.utts_per_speaker`), for the encoder losses (spkcausal.nn.encoder_losses). The speakers are dealt in
  rounds: a permutation of all C speakers cut into ceil(C / P) batches, the last one topped up with speakers drawn
  from the rest, so every speaker is in every round of ceil(C / P) batches. A speaker with n >= K utterances gives
  K distinct ones; one with n < K gives all n plus K - n repeats drawn from them: each repeat sits at its own
  position, so it gets its own random crop and augmentation draws, and no speaker is ever dropped.
- episodic_natural: the same P x K batches with the speakers drawn by frequency: each batch takes P distinct
  speakers, drawn one after another with probability proportional to n_c among those not yet in it (for P = 1
  exactly natural sampling's class frequencies; for P > 1 large classes slightly less, as no batch holds a speaker
  twice). Every item still has K - 1 same-speaker partners for the encoder losses, while the class marginal stays
  close to natural sampling's, which the episodic benchmark found the speaker-uniform deal to cost
  (docs/demo.md, "The tail's cost, with power, and the encoder-side methods").
- views V > 1 (`ViewsSampler`, `sampler.views`, any scheme but the episodic ones): an epoch of the same length
  holds 1/V as many draws of the scheme, each repeated V times in a row, so that V crops of one utterance share
  a batch (each at its own position: its own random crop and augmentation draws) and every item has V - 1
  same-speaker partners for the encoder losses without episodes. A rank takes whole groups of V.
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
STATIC_SCHEMES = ("natural", "class_balanced", "sqrt", "episodic", "episodic_natural")
EPISODIC = "episodic"
EPISODIC_NATURAL = "episodic_natural"
# Schemes that deal whole P x K episodes (EpisodicSampler; shards: ShardStream's episode plan).
EPISODIC_SCHEMES = (EPISODIC, EPISODIC_NATURAL)


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


@SAMPLERS.register(EPISODIC)
def episodic_weights(counts: np.ndarray, progress: float = 0.0) -> np.ndarray:
    """1 for every class with data: the episodic sampler deals speakers uniformly (shards: at the buffer)."""
    return (counts > 0).astype(np.float64)


@SAMPLERS.register(EPISODIC_NATURAL)
def episodic_natural_weights(counts: np.ndarray, progress: float = 0.0) -> np.ndarray:
    """n_c: episodes whose speakers are drawn by frequency (shards: by their count in the buffer window)."""
    return counts


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

    views = 1  # draws per utterance in a row (ViewsSampler); a saved state of another count is refused

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
        """Restore a saved position (the seed, scheme and views must match, or the order would differ; for an
        epoch-aware scheme the number of epochs too)."""
        if state.get("views", 1) != self.views:
            raise ValueError(f"sampler state is for {state.get('views', 1)} views per draw, this run has "
                             f"{self.views}")
        if state.get("seed", self.seed) != self.seed or state.get("name", self.name) != self.name:
            raise ValueError(f"sampler state is for seed={state.get('seed')} name={state.get('name')!r}, "
                             f"this sampler is seed={self.seed} name={self.name!r}")
        if self.name not in STATIC_SCHEMES and state.get("epochs", self.epochs) != self.epochs:
            raise ValueError(f"sampler state is for epochs={state.get('epochs')}, this run has epochs={self.epochs} "
                             f"(the {self.name!r} schedule depends on train.epochs)")
        self.epoch = int(state["epoch"])
        self.set_start(int(state["start"]))

    def draws(self, size: int) -> np.ndarray:
        """The epoch's first `size` draws of the scheme: permutations of the data in a row, or class draws."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        if self.name in PERMUTATION_SCHEMES:
            return np.concatenate([rng.permutation(n) for _ in range(math.ceil(size / n))])[:size]
        cls = rng.choice(len(self._classes), size=size, p=self.class_probs)
        within = np.floor(rng.random(size) * self._counts[cls]).astype(np.int64)
        return self._by_class[self._offsets[cls] + within]

    def global_order(self) -> np.ndarray:
        """The whole epoch's order over all ranks, padded to epoch_length * num_replicas."""
        order = self.draws(self.total)
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


class ViewsSampler(LongTailSampler):
    """The scheme's draws, each repeated `views` times in a row (module docstring); ranks take whole groups."""

    def __init__(self, labels: Sequence[int] | np.ndarray, name: str = "natural", views: int = 2, seed: int = 0,
                 num_samples: int | None = None, num_replicas: int = 1, rank: int = 0, epochs: int = 1):
        if name in EPISODIC_SCHEMES:
            raise ValueError(f"sampler.views applies to draws of single utterances; the {name} sampler deals "
                             "episodes (sampler.utts_per_speaker)")
        if int(views) < 1:
            raise ValueError(f"views must be at least 1, got {views}")
        super().__init__(labels, name, seed, num_samples, num_replicas, rank, epochs)
        self.views = int(views)
        # whole groups per rank, so that no rank holds a lone view of an utterance
        self.epoch_length = (self.epoch_length // self.views) * self.views

    def state_dict(self) -> dict[str, Any]:
        """Position, plus the group size the order depends on."""
        return {**super().state_dict(), "views": self.views}

    def global_order(self) -> np.ndarray:
        """All ranks' groups of the epoch, flattened (group-major: group j is items [j V, (j + 1) V))."""
        return np.repeat(self.draws(self.epoch_length // self.views * self.num_replicas), self.views)

    def indices(self) -> np.ndarray:
        """This rank's whole groups of the current epoch from the start position on."""
        mine = self.global_order().reshape(-1, self.views)[self.rank::self.num_replicas]
        return mine.reshape(-1)[self.start:]


def episode_items(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """K item positions out of a speaker's n: distinct when n >= K, else all n then K - n repeats drawn from them."""
    if n >= k:
        return rng.choice(n, size=k, replace=False)
    return np.concatenate([rng.permutation(n), rng.choice(n, size=k - n, replace=True)])


def split_batch(batch_size: int, k: int, num_speakers: int) -> int:
    """P = batch_size / K speakers per episode; a batch that K does not divide or more speakers than exist is a
    UsageError."""
    from ..utils import UsageError

    if batch_size % k:
        raise UsageError(f"sampler.utts_per_speaker={k} does not divide train.batch_size={batch_size} (episodic "
                         "batches are P speakers x K utterances)")
    p = batch_size // k
    if p > num_speakers:
        raise UsageError(f"episodic batches of {p} speakers x {k}, but the training data has {num_speakers} "
                         "speakers: lower train.batch_size or raise sampler.utts_per_speaker")
    return p


class EpisodicSampler(LongTailSampler):
    """P x K batches, speakers dealt uniformly (episodic) or drawn by frequency (episodic_natural; module
    docstring); rank r takes the global batches r, r + R, ... whole."""

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, utts_per_speaker: int = 2, seed: int = 0,
                 num_samples: int | None = None, num_replicas: int = 1, rank: int = 0, epochs: int = 1,
                 name: str = EPISODIC):
        if name not in EPISODIC_SCHEMES:
            raise ValueError(f"EpisodicSampler deals {' or '.join(EPISODIC_SCHEMES)} episodes, not {name!r}")
        super().__init__(labels, name, seed, num_samples, num_replicas, rank, epochs)
        self.k, self.batch_size = int(utts_per_speaker), int(batch_size)
        self.p = split_batch(self.batch_size, self.k, len(self._classes))
        # whole batches only, so every batch of a rank is one episode
        self.epoch_length = (self.epoch_length // self.batch_size) * self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """Position, plus the episode shape the order depends on."""
        return {**super().state_dict(), "utts_per_speaker": self.k, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; another episode shape is refused."""
        if (state.get("utts_per_speaker", self.k), state.get("batch_size", self.batch_size)) != \
                (self.k, self.batch_size):
            raise ValueError(f"sampler state is for {state.get('utts_per_speaker')} utterances per speaker and "
                             f"batches of {state.get('batch_size')}, this run has {self.k} and {self.batch_size}")
        super().load_state_dict(state)

    def episodes(self, num_batches: int) -> np.ndarray:
        """(num_batches, P) speaker (class) indices of the epoch's global batches: dealt in rounds (episodic) or
        P distinct ones drawn by frequency per batch (episodic_natural)."""
        rng = np.random.default_rng([self.seed, self.epoch, 20])
        c, p = len(self._classes), self.p
        if self.name == EPISODIC_NATURAL:
            freq = self._counts / self._counts.sum()
            return np.stack([rng.choice(c, size=p, replace=False, p=freq) for _ in range(num_batches)]) \
                if num_batches else np.zeros((0, p), dtype=np.int64)
        out: list[np.ndarray] = []
        while len(out) < num_batches:
            perm = rng.permutation(c)
            for lo in range(0, c, p):
                group = perm[lo:lo + p]
                if len(group) < p:  # top up the round's last batch with other speakers
                    rest = np.setdiff1d(np.arange(c), group)
                    group = np.concatenate([group, rng.choice(rest, size=p - len(group), replace=False)])
                out.append(group)
        return np.stack(out[:num_batches]) if out else np.zeros((0, p), dtype=np.int64)

    def global_order(self) -> np.ndarray:
        """All ranks' batches of the epoch, flattened (batch-major: batch j is items [j B, (j + 1) B))."""
        num_batches = self.epoch_length // self.batch_size * self.num_replicas
        rng = np.random.default_rng([self.seed, self.epoch, 21])
        order = [np.zeros(0, dtype=np.int64)]
        for speakers in self.episodes(num_batches):
            for c in speakers.tolist():
                items = episode_items(int(self._counts[c]), self.k, rng)
                order.append(self._by_class[self._offsets[c] + items])
        return np.concatenate(order)

    def indices(self) -> np.ndarray:
        """This rank's whole batches of the current epoch from the start position on."""
        batches = self.global_order().reshape(-1, self.batch_size)[self.rank::self.num_replicas]
        return batches.reshape(-1)[self.start:]


def build_sampler(name: str, labels: Sequence[int] | np.ndarray, seed: int = 0, num_samples: int | None = None,
                  num_replicas: int = 1, rank: int = 0, epochs: int = 1, batch_size: int | None = None,
                  utts_per_speaker: int = 2, views: int = 1) -> LongTailSampler:
    """Build a sampler by registry name (`SAMPLERS`): 'natural', 'class_balanced', 'sqrt', 'progressive' (which
    needs `epochs`, the run's train.epochs), 'episodic' or 'episodic_natural' (which need `batch_size`); `views`
    > 1 repeats each draw (ViewsSampler; `batch_size`, when given, must be a multiple of it)."""
    if views != 1:
        if views >= 1 and batch_size is not None and batch_size % views:
            from ..utils import UsageError

            raise UsageError(f"sampler.views={views} does not divide train.batch_size={batch_size} (the views of "
                             "one utterance share a batch)")
        return ViewsSampler(labels, name, views, seed, num_samples, num_replicas, rank, epochs)
    if name in EPISODIC_SCHEMES:
        if batch_size is None:
            raise ValueError(f"the {name} sampler needs the batch size")
        return EpisodicSampler(labels, batch_size, utts_per_speaker, seed, num_samples, num_replicas, rank, epochs,
                               name=name)
    return LongTailSampler(labels, name, seed, num_samples, num_replicas, rank, epochs)
