"""Data loading: CPU workers only read audio; features and augmentation happen on the training device.

Training (`TrainChunkDataset`): one random chunk of `chunk_samples` samples per utterance, read with a
soundfile partial read. The sampler (spkcausal.data.samplers) decides the order; `PositionSampler` wraps it so
each index arrives as `(index, epoch, position)` and the chunk offset is drawn from an RNG keyed by
(seed, epoch, rank, position). Chunks therefore depend on neither the worker count nor worker seeding, and a
run resumed mid-epoch reads exactly the chunks the uninterrupted run would have read.

Bad audio, two layers (documented choice):
1. A pre-scan (`scan_training_audio`, header reads in threads, no decoding) drops unreadable, empty and
   too-short files (`min_seconds`) before labels and the sampler are built; the count and the first keys are
   logged and the full list is written to `<exp_dir>/skipped_utts.txt` by the trainer.
2. Should a file still fail at read time (changed on disk, broken data after a valid header), the worker
   logs it, counts it and reads a replacement chosen deterministically from the same speaker (another
   utterance when there is one), so the batch size and the label distribution stay constant and no step
   crashes.

Evaluation (`extract.AudioSource` + `length_batches`): whole utterances, batched by identical sample count (exact:
no padding ever touches an embedding), by similar length with zero padding (`mode="pad"`: neighbours in length),
`mode="bucket"`: utterances whose Fbank frame counts differ by less than `bucket_frames` (default 1: equal frame
counts; the frames, snip_edges as in Kaldi, then never contain a padded sample, so the embeddings are those of
exact up to float reduction order, with ~160x fewer distinct groups), or `mode="crop"`: bucketed after cutting
every utterance longer than `crop_seconds` to its central `crop_seconds` (`AudioSource(max_samples=...)`).
Padded modes pass lengths to Fbank and pooling. docs/scale.md has their measured differences from exact.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..utils import DataError, UsageError
from .audio import probe_audio, read_chunk
from .datadir import DataDir

log = logging.getLogger("spkcausal.data.dataset")

# Stream tags so that chunk offsets and replacement draws never share an RNG stream.
_CHUNK, _REPLACE = 0, 1


@dataclass
class ScanResult:
    """Outcome of the training-audio pre-scan: usable utterances (sorted), their lengths, and what was skipped."""

    utts: list[str]
    num_samples: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)


def scan_training_audio(data: DataDir, min_seconds: float, sample_rate: int = 16000,
                        num_threads: int = 8, cache: bool = True) -> ScanResult:
    """Header-probe every utterance; drop unreadable, empty, wrong-rate and shorter-than-`min_seconds` files.

    With `cache` and a data dir read from disk, the probes come from its probe cache where a file's size and
    mtime are unchanged (spkcausal.data.lengthcache): a restart on the same corpus reads no header."""
    from concurrent.futures import ThreadPoolExecutor

    from .lengthcache import CACHE_NAME, cached_probes

    utts = data.utts
    paths = [data.wav[u] for u in utts]
    where = data.path / CACHE_NAME if cache and data.path is not None else None
    min_samples = int(round(min_seconds * sample_rate))
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        probes = cached_probes(paths, sample_rate, where, pool, probe_audio)
    if where is not None:
        log.info("training audio: %d of %d headers read, the others from %s", probes.probed, len(utts), where)
    bad = np.zeros(len(utts), dtype=bool)
    bad[list(probes.why)] = True
    short = ~bad & (probes.frames < min_samples)
    reasons = {**probes.why, **{i: f"too short ({int(probes.frames[i]) / sample_rate:.3f} s < {min_seconds} s)"
                                for i in np.flatnonzero(short).tolist()}}
    skipped = {utts[i]: reasons[i] for i in sorted(reasons)}
    usable = np.flatnonzero(~bad & ~short).tolist()
    ok = dict(zip([utts[i] for i in usable], probes.frames[usable].tolist()))
    if skipped:
        first = "; ".join(f"{u}: {skipped[u]}" for u in sorted(skipped)[:5])
        log.warning("skipped %d of %d training utterances (unreadable, empty or too short), first: %s",
                    len(skipped), len(utts), first)
    return ScanResult(sorted(ok), ok, skipped)


class TrainChunkDataset(Dataset):
    """Random fixed-length chunks of training utterances; items are `(wave float32 (N,), label, index)`."""

    def __init__(self, data: DataDir, utts: Sequence[str], chunk_samples: int, speakers: Sequence[str] | None = None,
                 seed: int = 0, rank: int = 0, sample_rate: int = 16000, max_logged_failures: int = 5,
                 by_utterance: bool = False):
        self.keys = list(utts)
        if not self.keys:
            raise DataError("no usable training utterances", data.path)
        self.paths = [data.wav[u] for u in self.keys]
        # by_utterance (data.labels: utterance): every utterance is a class of its own, so nothing downstream sees
        # a speaker label (self-supervised pre-training; `speakers` then lists the utterances)
        unit = (lambda u: u) if by_utterance else data.utt2spk.__getitem__
        self.speakers = list(speakers) if speakers is not None else sorted({unit(u) for u in self.keys})
        spk2label = {s: i for i, s in enumerate(self.speakers)}
        self.labels = np.array([spk2label[unit(u)] for u in self.keys], dtype=np.int64)
        self.chunk_samples, self.seed, self.rank = int(chunk_samples), int(seed), int(rank)
        self.sample_rate = sample_rate
        self.max_logged_failures = max_logged_failures
        order = np.argsort(self.labels, kind="stable")
        self._by_label = np.split(order, np.cumsum(np.bincount(self.labels, minlength=len(self.speakers)))[:-1])
        self.failures = 0  # per process (each worker counts its own)

    @property
    def num_speakers(self) -> int:
        """Number of distinct speakers (classes before speed perturbation)."""
        return len(self.speakers)

    @property
    def num_utts(self) -> int:
        """Number of training utterances."""
        return len(self.keys)

    def class_counts(self) -> np.ndarray:
        """Training utterances per speaker label."""
        return np.bincount(self.labels, minlength=len(self.speakers))

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return read_chunk(self.paths[index], self.chunk_samples, rng, expect_sr=self.sample_rate)

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple[torch.Tensor, int, int, int]:
        """(wave, label, index, read failures); `item` is an index or `(index, epoch, position)` (reproducible)."""
        if isinstance(item, tuple | list):
            index, epoch, pos = (int(v) for v in item)
        else:
            index, epoch, pos = int(item), 0, int(item)
        key = [self.seed, epoch, self.rank, pos]
        wave = None
        candidate = index
        failures = 0
        for attempt in range(8):
            try:
                wave = self._read(candidate, np.random.default_rng(key + [_CHUNK, attempt]))
                break
            except DataError as e:
                failures += 1
                self.failures += 1
                if self.failures <= self.max_logged_failures:
                    log.warning("training read failed, using another utterance of the speaker instead: %s", e)
                same = self._by_label[self.labels[index]]
                rng = np.random.default_rng(key + [_REPLACE, attempt])
                pool = same[same != candidate] if len(same) > 1 else np.arange(len(self.keys))
                candidate = int(rng.choice(pool))
        if wave is None:
            raise DataError(f"8 consecutive read failures around utterance {self.keys[index]}", self.paths[index])
        # The label follows the audio actually returned (a lone speaker's replacement comes from elsewhere).
        wave_t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        return wave_t, int(self.labels[candidate]), candidate, failures


class SizedSampler(Protocol):
    """What PositionSampler wraps: indices with a length (every sampler of data/samplers.py)."""

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class PositionSampler(Sampler):
    """Wraps a resumable sampler (set_epoch / set_start) so each index carries (epoch, position in shard)."""

    def __init__(self, base: SizedSampler):
        self.base = base

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, start = int(getattr(self.base, "epoch", 0)), int(getattr(self.base, "start", 0))
        for i, index in enumerate(self.base):
            yield (int(index), epoch, start + i)

    def __len__(self) -> int:
        return len(self.base)


def collate_train(batch: list[tuple[torch.Tensor, int, int, int]]) -> tuple[torch.Tensor, ...]:
    """Stack chunks: (B, N) waves, (B,) labels, (B,) dataset indices, () number of replaced reads."""
    waves = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    index = torch.tensor([b[2] for b in batch], dtype=torch.long)
    return waves, labels, index, torch.tensor(sum(b[3] for b in batch))


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy from the worker's torch seed."""
    # Chunk offsets come from position-keyed RNGs; this only keeps stray library randomness reproducible.
    info = torch.utils.data.get_worker_info()
    seed = info.seed % (2 ** 32) if info is not None else worker_id
    np.random.seed(seed)


def train_loader(dataset: TrainChunkDataset, sampler: SizedSampler, batch_size: int, num_workers: int = 4,
                 pin_memory: bool = True, prefetch_factor: int | None = 4, generator_seed: int = 0) -> DataLoader:
    """DataLoader over `PositionSampler(sampler)`: fixed batches (drop_last), pinned memory, persistent workers."""
    workers = num_workers > 0  # DataLoader refuses a prefetch factor without workers
    gen = torch.Generator().manual_seed(generator_seed)  # worker base seeds derive from it, not from global RNG
    return DataLoader(dataset, batch_size=batch_size, sampler=PositionSampler(sampler), num_workers=num_workers,
                      collate_fn=collate_train, pin_memory=pin_memory and torch.cuda.is_available(),
                      drop_last=True, generator=gen, persistent_workers=workers,
                      prefetch_factor=prefetch_factor if workers else None,
                      worker_init_fn=seed_worker if workers else None)


# ------------------------------------------------------------------ evaluation


# "crop": utterances longer than this are cut to their central CROP_SECONDS (docs/scale.md).
CROP_SECONDS = 10.0
EVAL_MODES = ("exact", "pad", "bucket", "crop")


def length_batches(lengths: Sequence[int], batch_samples: int, max_batch: int = 256, mode: str = "exact",
                   bucket_frames: int = 1, frame_length: int = 400, frame_shift: int = 160) -> list[list[int]]:
    """Index batches of at most `batch_samples` padded samples (and `max_batch` items), longest first.

    mode="exact": only utterances with identical sample counts share a batch (bit-for-bit batch independence
    up to float reduction order). mode="pad": neighbours in length order share a batch, padded to the longest.
    mode="bucket" (and "crop", whose lengths the caller has already capped): frame counts (Kaldi framing,
    `frame_length` / `frame_shift` samples) within a batch differ by less than `bucket_frames`.
    """
    if mode not in EVAL_MODES:
        raise UsageError(f"unknown batching mode {mode!r}; expected one of {', '.join(EVAL_MODES)}")
    sizes = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_len = 0
    for i in order.tolist():
        n = int(sizes[i])
        if cur:
            if mode == "exact":
                same_group = n == cur_len
            elif mode == "pad":
                same_group = True
            else:
                same_group = (cur_len - frame_length) // frame_shift - (n - frame_length) // frame_shift \
                    < bucket_frames
            if not same_group or (len(cur) + 1) * cur_len > batch_samples or len(cur) >= max_batch:
                batches.append(cur)
                cur = []
        if not cur:
            cur_len = n
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def collate_eval(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad to the longest: (B, T) waves, (B,) lengths in samples, (B,) dataset indices."""
    lengths = torch.tensor([len(b[0]) for b in batch], dtype=torch.long)
    waves = torch.zeros(len(batch), int(lengths.max()))
    for i, (w, _) in enumerate(batch):
        waves[i, :len(w)] = w
    return waves, lengths, torch.tensor([b[1] for b in batch], dtype=torch.long)


def eval_loader(dataset: Dataset, batches: list[list[int]], num_workers: int = 2,
                pin_memory: bool = True) -> DataLoader:
    """DataLoader yielding the given index batches of whole utterances."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_eval,
                      pin_memory=pin_memory and torch.cuda.is_available(),
                      prefetch_factor=2 if num_workers > 0 else None)  # refused without workers
