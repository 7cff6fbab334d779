"""Training from tar shards (`data.shards: DIR`): rank / worker split, two-level shuffle, re-sampling, exact resume.

Layout of an epoch (documented rules; docs/scale.md explains them for users):
- Every rank reads `epoch_length = ceil(num_samples / world)` examples (`num_samples`: `sampler.num_samples`, or
  the usable utterances), as `steps = epoch_length // batch_size` batches (drop_last): the same count on every
  rank, so DDP never waits on a rank that ran out.
- A rank's batches come from `S` streams (`data.shard_streams`, default `max(1, data.num_workers)`): batch k is the
  (k // S)-th batch of stream k % S. DataLoader workers own streams (worker w: streams s with s % W == w, W must
  divide S), and the loader's round-robin over workers then yields exactly batch 0, 1, 2, ... The order of the
  batches is thus a function of S, not of the number of workers (W = 0 reads all streams in the main process).
- Shard order: each epoch permutes the shards with (seed, epoch); rank r takes `order[r::world]`, stream s of it
  `[s::S]`. No two ranks or streams read the same shard in an epoch. A stream reads its shards in that order and,
  when they hold fewer examples than its share of batches, goes through them again (a rank with more examples
  than its share leaves the rest for later epochs, which deal the shards differently).
- Second level, a shuffle buffer of `data.shuffle_buffer` examples per stream. natural: draw a buffer slot
  uniformly, emit it, refill from the stream (each example once per pass). class_balanced / sqrt / progressive:
  sampling weights at the buffer (progressive: the epoch's p_c(t), so the weights are planned per epoch).
  The buffer is a FIFO window; each draw picks a slot with probability proportional to
  `p_c / n_c` (p_c the scheme's class probability, spkcausal.data.samplers.class_probabilities; n_c the class's
  utterance count), emits it *with replacement*, then the oldest entry leaves and the next example enters.
  Every example stays in the window for the same number of draws, so it is emitted `K w_i / sum_window w` times
  on average, and since the window's weight sum is K / N in expectation a class is emitted with frequency p_c
  over an epoch, while the I/O stays sequential (one example read per example emitted).
  episodic (P x K episodes, spkcausal.data.samplers): batch b of a stream draws from the window of the
  `buffer` examples read from position b * B on (the window slides by one batch per batch, so every example read is
  in some window): P speakers uniformly among those present in the window (all of them, topped up with repeats,
  when fewer are), then K items of each as the file sampler does (distinct, or all plus repeats).
  episodic_natural: the same, with the P distinct speakers drawn in proportion to their examples in the window
  (the stream's own frequencies, as the file sampler draws by n_c).
- Exact resume: the shuffle decisions depend only on the index (labels, member order) and RNGs keyed by
  (seed, epoch, rank, stream), so a stream's whole emission order is planned up front from metadata. A resumed
  run re-plans, skips the shards it has finished, reads on from the first example it still needs and emits from
  the checkpoint's position. Chunk offsets come from (seed, epoch, rank, position in the rank's epoch) as for the
  file sampler. The checkpoint records streams, buffer size and the index checksum; a change is refused.
- A member that fails to decode is replaced by the next member of the same batch (the label follows the audio),
  counted like the file dataset's replaced reads.
"""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..utils import DataError, UsageError
from .samplers import (
    EPISODIC_NATURAL,
    EPISODIC_SCHEMES,
    PERMUTATION_SCHEMES,
    SAMPLERS,
    STATIC_SCHEMES,
    class_probabilities,
    episode_items,
    split_batch,
)
from .shards import ShardIndex

log = logging.getLogger("spkcausal.data.shardstream")

_CHUNK, _REPLACE, _ORDER, _BUFFER = 0, 1, 10, 11  # RNG stream tags (0 / 1 as in spkcausal.data.dataset)


def chunk_from_bytes(data: bytes, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random `num_samples` span of encoded audio bytes (partial decode); shorter audio is repeated to fill it."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            frames = f.frames
            if frames <= 0:
                raise DataError("empty audio")
            if frames >= num_samples:
                f.seek(int(rng.integers(0, frames - num_samples + 1)))
                x = f.read(num_samples, dtype="float32", always_2d=True)
            else:
                x = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"undecodable audio ({e})") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if len(x) < num_samples:
        if len(x) == 0:
            raise DataError("empty audio")
        x = np.tile(x, -(-num_samples // len(x)))
        start = int(rng.integers(0, len(x) - num_samples + 1))
        x = x[start:start + num_samples]
    return np.ascontiguousarray(x, dtype=np.float32)


def shard_members(shard_of: np.ndarray, ids: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """For each shard 0..num_shards-1, the `ids` whose `shard_of` is that shard, in their order in `ids`.

    One stable sort, O(N log N); a mask per shard was O(N x shards), i.e. quadratic in the corpus."""
    order = np.argsort(shard_of, kind="stable")
    counts = np.bincount(shard_of, minlength=num_shards)[:num_shards]
    keep = shard_of[order] < num_shards
    return np.split(ids[order][keep], np.cumsum(counts)[:-1])


def _window_draw(w: np.ndarray, u: float, e: int, k: int) -> int:
    """Draw e of the weighted FIFO window: the slot whose cumulative weight in w[e:e+k] first exceeds u x the
    window's sum (the definition; window_draws computes it for all draws at once)."""
    c = np.cumsum(w[e:e + k])
    return min(int(np.searchsorted(c, u * c[-1], side="right")), k - 1)


def window_draws(w: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
    """`_window_draw(w, u[e], e, k)` for every draw e, vectorised and equal to it draw for draw.

    The loop summed a k-wide window per draw (k x draws additions: 22.6 s per epoch at VoxCeleb2's size). Here
    one prefix sum C of w serves every window: draw e's slot is the number of C[e+1 .. e+k] at or below
    C[e] + u[e] (C[e+k] - C[e]). The two sums round differently, so a draw whose target lies within a bound of
    both rounding errors of a slot boundary (tol below, rigorous for non-negative weights: recursive summation
    of n terms errs by at most n eps x the sum) is recomputed with the loop; at VoxCeleb2's size that is a few
    draws in a million, and the result is then the loop's exactly (tested against it, ties included)."""
    n = len(u)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    c = np.concatenate(([0.0], np.cumsum(w, dtype=np.float64)))
    e = np.arange(n)
    target = c[e] + u * (c[e + k] - c[e])
    count = np.searchsorted(c, target, side="right") - (e + 1)  # how many of C[e+1 .. e+k] are <= target
    slots = np.minimum(count, k - 1)
    eps = np.finfo(np.float64).eps
    tol = 8.0 * (len(c) + 2 * k + 8) * eps * c[-1]
    below = c[e + np.clip(count, 0, k)]  # the largest prefix sum <= target (C[e] when count is 0)
    above = c[np.minimum(e + count + 1, len(c) - 1)]
    unsure = (target - below <= tol) | (above - target <= tol) | (count >= k)
    for i in np.flatnonzero(unsure).tolist():
        slots[i] = _window_draw(w, float(u[i]), i, k)
    return slots


class ShardTrainStream(IterableDataset):
    """Batches `(waves (B, N), labels (B,), example ids (B,), replaced reads)` of one rank from a shard set."""

    def __init__(self, index: ShardIndex, chunk_samples: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, name: str = "natural", num_samples: int | None = None, min_samples: int = 0,
                 sample_rate: int = 16000, streams: int = 1, buffer_size: int = 1000, epochs: int = 1,
                 utts_per_speaker: int = 2):
        SAMPLERS.get(name)
        self.k = int(utts_per_speaker)
        self.epochs = int(epochs)
        self.index, self.chunk_samples, self.batch_size = index, int(chunk_samples), int(batch_size)
        self.seed, self.rank, self.world, self.name = int(seed), int(rank), int(world), name
        self.streams, self.buffer_size = max(1, int(streams)), max(1, int(buffer_size))
        usable = (index.sample_rate == sample_rate) & (index.num_samples >= min_samples)
        self.skipped = dict(index.manifest.get("skipped", {}))
        for i in np.flatnonzero(~usable):
            rate, n = int(index.sample_rate[i]), int(index.num_samples[i])
            self.skipped[index.utts[i]] = (f"sample rate {rate} Hz, expected {sample_rate}" if rate != sample_rate
                                           else f"too short ({n / sample_rate:.3f} s < {min_samples / sample_rate} s)")
        ids = np.flatnonzero(usable)
        if len(ids) == 0:
            raise DataError("no usable training utterances in the shards", index.root)
        self.speakers = sorted({index.spks[i] for i in ids})
        spk2label = {s: c for c, s in enumerate(self.speakers)}
        self.labels = np.full(len(index), -1, dtype=np.int64)
        self.labels[ids] = [spk2label[index.spks[i]] for i in ids]
        self.num_utts = len(ids)
        # Usable example ids of each shard, in file order (index rows are in shard and member order).
        self._by_shard = shard_members(index.shard[ids], ids, index.num_shards)
        self._shards = np.array([s for s in range(index.num_shards) if len(self._by_shard[s])], dtype=np.int64)
        if len(self._shards) < self.world * self.streams:
            raise UsageError(f"{len(self._shards)} shards with usable audio cannot feed {self.world} ranks x "
                             f"{self.streams} streams (data.shard_streams / data.num_workers): write more, smaller "
                             "shards (make-shards --utts-per-shard) or use fewer workers")
        self._ids = ids
        self.example_weights(0)  # a bad `epochs` fails here
        total = self.num_utts if num_samples is None else int(num_samples)
        self.epoch_length = math.ceil(total / self.world)
        self.steps = self.epoch_length // self.batch_size
        if self.name in EPISODIC_SCHEMES:
            self.p = split_batch(self.batch_size, self.k, len(self.speakers))
        self.epoch, self.start = 0, 0
        self.failures = 0

    def example_weights(self, epoch: int) -> np.ndarray:
        """Buffer weight p_c(epoch) / n_c of every index row (0 for unusable ones)."""
        counts = self.class_counts()
        p = class_probabilities(counts, self.name, epoch, self.epochs)
        w = np.zeros(len(self.index))
        w[self._ids] = (p / np.maximum(counts, 1))[self.labels[self._ids]]
        return w

    # ---------------------------------------------------------------- sampler interface (as LongTailSampler)

    @property
    def num_speakers(self) -> int:
        """Number of distinct speakers (classes before speed perturbation)."""
        return len(self.speakers)

    def class_counts(self) -> np.ndarray:
        """Usable training utterances per speaker label."""
        return np.bincount(self.labels[self.labels >= 0], minlength=len(self.speakers))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; resets the start position."""
        self.epoch, self.start = int(epoch), 0

    def set_start(self, index: int) -> None:
        """Start at sample `index` of this rank's epoch (a multiple of the batch size)."""
        if not 0 <= index <= self.epoch_length or index % self.batch_size:
            raise ValueError(f"start {index} is not a batch boundary within [0, {self.epoch_length}]")
        self.start = int(index)

    def state_dict(self) -> dict[str, Any]:
        """Position and everything the order depends on, for the checkpoint."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "name": self.name,
                "source": "shards", "streams": self.streams, "buffer": self.buffer_size,
                "index_sha256": self.index.manifest.get("index_sha256"), "epochs": self.epochs,
                "utts_per_speaker": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; a checkpoint of another order (seed, scheme, streams, buffer, shards) is refused."""
        mine = self.state_dict()
        keys: tuple[str, ...] = ("seed", "name", "source", "streams", "buffer", "index_sha256")
        if self.name in EPISODIC_SCHEMES:
            keys += ("utts_per_speaker",)
        if self.name not in STATIC_SCHEMES:
            keys += ("epochs",)  # the epoch-aware schedule depends on train.epochs
        for key in keys:
            if state.get(key) != mine[key]:
                raise ValueError(f"sampler state has {key}={state.get(key)!r}, this run has {key}={mine[key]!r} "
                                 "(seed, sampler, data.shard_streams / data.num_workers, data.shuffle_buffer, "
                                 "the shards and, for progressive, train.epochs must stay the same for an exact "
                                 "resume)")
        self.epoch = int(state["epoch"])
        self.set_start(int(state["start"]))

    # ---------------------------------------------------------------- planning (metadata only)

    def stream_shards(self, epoch: int, stream: int) -> np.ndarray:
        """Shards read by one stream of this rank in an epoch, in reading order."""
        order = self._shards[np.random.default_rng([self.seed, epoch, _ORDER]).permutation(len(self._shards))]
        return order[self.rank::self.world][stream::self.streams]

    def stream_batches(self, stream: int) -> int:
        """Batches of an epoch that come from `stream`."""
        return len(range(stream, self.steps, self.streams))

    def plan(self, epoch: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        """(reads, emits): example ids in reading order, and for each emitted example its position in `reads`."""
        quota = self.stream_batches(stream) * self.batch_size
        source = [self._by_shard[s] for s in self.stream_shards(epoch, stream)]
        one_pass = np.concatenate(source)
        k = min(self.buffer_size, len(one_pass))
        rng = np.random.default_rng([self.seed, epoch, self.rank, stream, _BUFFER])
        emits = np.empty(quota, dtype=np.int64)
        if self.name in PERMUTATION_SCHEMES:
            passes = max(1, math.ceil(quota / len(one_pass)))
            reads = np.tile(one_pass, passes)
            buf = list(range(min(k, len(reads))))
            nxt = len(buf)
            u = rng.random(quota)
            for e in range(quota):
                i = int(u[e] * len(buf))
                emits[e] = buf[i]
                if nxt < len(reads):
                    buf[i], nxt = nxt, nxt + 1
                else:
                    buf[i] = buf[-1]
                    buf.pop()
            return reads[:nxt], emits
        if self.name in EPISODIC_SCHEMES:
            return self._plan_episodes(one_pass, k, quota, rng)
        # Weighted FIFO window: one read per draw after the initial fill.
        need = k + quota
        reads = np.tile(one_pass, math.ceil(need / len(one_pass)))[:need]
        w = self.example_weights(epoch)[reads]
        emits[:] = np.arange(quota) + window_draws(w, rng.random(quota), k)
        return reads[:k + quota - 1], emits

    def _plan_episodes(self, one_pass: np.ndarray, k: int, quota: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(reads, emits) of episodic batches, each from its sliding window of k reads (module docstring)."""
        b = self.batch_size
        reads = np.tile(one_pass, math.ceil((k + quota) / len(one_pass)))[:k + quota]
        labels = self.labels[reads]
        emits = np.empty(quota, dtype=np.int64)
        for j in range(quota // b):
            lo = j * b
            window = labels[lo:lo + k]
            present, have = np.unique(window, return_counts=True)
            weights = have / have.sum() if self.name == EPISODIC_NATURAL else None
            chosen = rng.choice(present, size=min(self.p, len(present)), replace=False, p=weights)
            if len(chosen) < self.p:
                chosen = np.concatenate([chosen, rng.choice(present, size=self.p - len(chosen), replace=True)])
            out = []
            for c in chosen.tolist():
                where = lo + np.flatnonzero(window == c)
                out.append(where[episode_items(len(where), self.k, rng)])
            emits[lo:lo + b] = np.concatenate(out)
        return reads[:k + quota - 1], emits

    # ---------------------------------------------------------------- reading

    def _member_bytes(self, reads: np.ndarray, wanted: np.ndarray) -> Iterator[tuple[int, bytes]]:
        """(read position, audio bytes) for the sorted positions `wanted`, reading each shard front to back."""
        from .shards import iter_audio_members

        shard = self.index.shard[reads]
        # A run = one pass over one shard: the shard changes, or the ids restart (the stream went round again).
        new = np.ones(len(reads), dtype=bool)
        new[1:] = (shard[1:] != shard[:-1]) | (reads[1:] <= reads[:-1])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], len(reads))
        # `wanted` is sorted: each run's share is one slice (a mask per run would cost runs x wanted).
        cuts = np.searchsorted(wanted, np.stack([starts, ends]))
        for lo, a, b in zip(starts.tolist(), cuts[0].tolist(), cuts[1].tolist()):
            mine = wanted[a:b]
            if len(mine) == 0:
                continue  # finished before the resume point, or never emitted: not even opened
            expect = {self.index.keys[reads[p]]: int(p) for p in mine}
            path = self.index.shard_paths[int(shard[lo])]
            for key, _, data in iter_audio_members(path):
                p = expect.pop(key, None)
                if p is not None:
                    yield p, data
                    if not expect:
                        break
            if expect:
                raise DataError(f"shard lacks {len(expect)} member(s) listed in index.tsv, first "
                                f"{next(iter(expect))}", path)

    def _stream_batches(self, epoch: int, stream: int, first_batch: int) -> Iterator[tuple[int, list[tuple]]]:
        """(local batch number, [(example id, bytes, rank position)]) of one stream from `first_batch` on."""
        reads, emits = self.plan(epoch, stream)
        e0 = first_batch * self.batch_size
        todo = emits[e0:]
        if len(todo) == 0:
            return
        last_use = {int(p): e for e, p in enumerate(todo.tolist())}
        wanted = np.array(sorted(last_use), dtype=np.int64)
        members = self._member_bytes(reads, wanted)
        cache: dict[int, bytes] = {}
        batch: list[tuple] = []
        for e, p in enumerate(todo.tolist()):
            while p not in cache:
                q, data = next(members)
                cache[q] = data
            data = cache[p] if last_use[p] != e else cache.pop(p)
            local = first_batch + e // self.batch_size
            pos = (stream + local * self.streams) * self.batch_size + e % self.batch_size
            batch.append((int(reads[p]), data, pos))
            if len(batch) == self.batch_size:
                yield local, batch
                batch = []

    def _decode(self, batch: list[tuple], epoch: int) -> tuple[torch.Tensor, ...]:
        waves, labels, ids, failures = [], [], [], 0
        for j, (ex, _, pos) in enumerate(batch):
            key = [self.seed, epoch, self.rank, pos]
            for attempt in range(len(batch)):
                cand, data, _ = batch[(j + attempt) % len(batch)]
                tag = _CHUNK if attempt == 0 else _REPLACE
                try:
                    waves.append(chunk_from_bytes(data, self.chunk_samples,
                                                  np.random.default_rng(key + [tag, attempt])))
                except DataError as err:
                    failures += 1
                    self.failures += 1
                    if self.failures <= 5:
                        log.warning("decoding %s failed, using another member of the batch: %s",
                                    self.index.utts[cand], err)
                    continue
                labels.append(int(self.labels[cand]))
                ids.append(cand)
                break
            else:
                raise DataError(f"no member of a batch around {self.index.utts[ex]} decodes", self.index.root)
        return (torch.from_numpy(np.stack(waves)), torch.tensor(labels, dtype=torch.long),
                torch.tensor(ids, dtype=torch.long), torch.tensor(failures))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.streams % workers:
            raise UsageError(f"{workers} DataLoader workers cannot share {self.streams} shard streams evenly "
                             "(data.num_workers must divide data.shard_streams)")
        epoch, k0 = self.epoch, self.start // self.batch_size
        gens = {}
        for k in range(k0, self.steps):
            if k % workers != worker:
                continue
            s = k % self.streams
            if s not in gens:
                gens[s] = self._stream_batches(epoch, s, len(range(s, k0, self.streams)))
            local, batch = next(gens[s])
            assert local == k // self.streams
            yield self._decode(batch, epoch)


def shard_loader(stream: ShardTrainStream, num_workers: int = 4, pin_memory: bool = True,
                 prefetch_factor: int | None = 4, generator_seed: int = 0) -> DataLoader:
    """DataLoader over a ShardTrainStream (it yields whole batches); workers are re-created each epoch so they
    see the epoch and start position set on the stream."""
    from .dataset import seed_worker

    workers = num_workers > 0  # DataLoader refuses a prefetch factor without workers
    gen = torch.Generator().manual_seed(generator_seed)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory and
                      torch.cuda.is_available(), generator=gen, prefetch_factor=prefetch_factor if workers else None,
                      worker_init_fn=seed_worker if workers else None)


def prepare_shard_stream(cfg: dict[str, Any], rank: int, world: int, exp_dir: Any, log: logging.Logger,
                         chunk: int, read: int) -> tuple[ShardTrainStream, tuple[int, dict[str, str]]]:
    """The trainer's data source for `data.shards`: this rank's stream, and (chunk samples, skipped utterances)."""
    from pathlib import Path

    from ..utils import write_text_atomic
    from .shards import load_shards

    dcfg = cfg["data"]
    if dcfg.get("train"):
        raise UsageError("data.train and data.shards are both set; train from one of them")
    sr = int(dcfg["sample_rate"])
    streams = dcfg.get("shard_streams") or max(1, int(dcfg["num_workers"]))
    stream = ShardTrainStream(load_shards(dcfg["shards"]), read, int(cfg["train"]["batch_size"]),
                              seed=int(cfg["seed"]), rank=rank, world=world, name=cfg["sampler"]["name"],
                              num_samples=cfg["sampler"].get("num_samples"),
                              min_samples=int(round(float(dcfg["min_seconds"]) * sr)), sample_rate=sr,
                              streams=int(streams), buffer_size=int(dcfg["shuffle_buffer"]),
                              epochs=int(cfg["train"]["epochs"]),
                              utts_per_speaker=int(cfg["sampler"].get("utts_per_speaker", 2)))
    if rank == 0:
        write_text_atomic(Path(exp_dir) / "skipped_utts.txt",
                          "".join(f"{u} {why}\n" for u, why in sorted(stream.skipped.items())))
        log.info("training shards %s: %d usable utterances in %d shards, %d skipped; %d stream(s) per rank, "
                 "shuffle buffer %d", dcfg["shards"], stream.num_utts, stream.index.num_shards,
                 len(stream.skipped), stream.streams, stream.buffer_size)
    return stream, (chunk, stream.skipped)
