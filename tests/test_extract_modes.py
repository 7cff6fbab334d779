"""Extraction batching modes beyond exact / pad: bucket (equal Fbank frame counts) and crop (central window)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_train import make_corpus

from spkcausal.data.datadir import DataDir
from spkcausal.data.dataset import length_batches
from spkcausal.inference.extract import embed_utterances
from spkcausal.nn.config import merge_defaults
from spkcausal.nn.features import Fbank
from spkcausal.nn.network import build_extractor
from spkcausal.utils import UsageError


def test_bucket_groups_equal_frame_counts_only():
    # Kaldi framing: 400-sample frames every 160 samples; 16080..16239 samples all give 99 frames.
    lengths = [16080, 16239, 16240, 16100, 20000, 16080, 19999, 16079]
    batches = length_batches(lengths, 10 ** 9, mode="bucket")
    assert sorted(sorted(b) for b in batches) == [[0, 1, 3, 5], [2], [4, 6], [7]]
    assert len(length_batches(lengths, 10 ** 9, mode="exact")) == 7  # exact only merges the two 16080s
    wide = length_batches(lengths, 10 ** 9, mode="bucket", bucket_frames=2)  # the batch's longest decides
    assert sorted(sorted(b) for b in wide) == [[0, 1, 2, 3, 5], [4, 6], [7]]
    with pytest.raises(UsageError, match="bucket"):
        length_batches(lengths, 100, mode="buckets")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    data = DataDir.load(make_corpus(root, utts_per_spk=6, seconds=(1.0, 1.3), seed=3))
    torch.manual_seed(0)
    model = build_extractor(merge_defaults({"model": {"name": "ecapa_tiny", "embed_dim": 16}})).eval()
    return root, data, model


def test_bucket_equals_exact_and_pad_does_not(setup):
    _, data, model = setup
    fbank = Fbank(n_mels=80)
    run = {m: embed_utterances(model, fbank, data, data.utts, mode=m, num_workers=0, progress=False)
           for m in ("exact", "bucket", "pad")}
    lengths = [sf.info(data.wav[u]).frames for u in data.utts]
    # The fixture has utterances that share a frame count but not a sample count: bucket batches them.
    assert len(length_batches(lengths, 10 ** 9, mode="bucket")) < len(length_batches(lengths, 10 ** 9))
    scale = np.abs(run["exact"]).max()
    # same float32 model, other batch shapes: each ~6e-7 * scale off float64 (test_models); measured 2e-7 * scale
    assert np.abs(run["bucket"] - run["exact"]).max() < 1e-5 * scale
    assert np.abs(run["pad"] - run["exact"]).max() > 1e-3 * scale


def test_crop_embeds_the_central_window(setup):
    root, data, model = setup
    fbank = Fbank(n_mels=80)
    crop = 1.1
    got = embed_utterances(model, fbank, data, data.utts, mode="crop", crop_seconds=crop, num_workers=0,
                           progress=False)
    # Independent reference: write each utterance's central 1.1 s to a file and embed it exactly.
    wav = {}
    for u in data.utts:
        x, sr = sf.read(data.wav[u], dtype="float32")
        n = int(round(crop * sr))
        if len(x) > n:
            s = (len(x) - n) // 2
            x = x[s:s + n]
        p = root / "cropped" / f"{u}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(str(p), x, sr, subtype="FLOAT")
        wav[u] = str(p)
    ref_data = DataDir(wav=wav, utt2spk=dict(data.utt2spk))
    want = embed_utterances(model, fbank, ref_data, data.utts, mode="exact", num_workers=0, progress=False)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()  # as bucket vs exact
    full = embed_utterances(model, fbank, data, data.utts, mode="exact", num_workers=0, progress=False)
    cut = [i for i, u in enumerate(data.utts) if sf.info(data.wav[u]).frames > int(crop * 16000)]
    assert cut and np.abs(got[cut] - full[cut]).max() > 1e-3 * np.abs(full).max()
