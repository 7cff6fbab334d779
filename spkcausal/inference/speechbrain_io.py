"""SpeechBrain ECAPA-TDNN checkpoints in and out.

In: the `embedding_model.ckpt` that SpeechBrain's Checkpointer writes (a plain state dict of
`speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`; also the file of a downloaded spkrec-ecapa-voxceleb dir)
becomes a spkcausal checkpoint without a head: the architecture is read from the tensor shapes, the
front-end is SpeechBrain's own (`features.frontend: speechbrain`, see features.SpeechBrainFbank), so `embed`
gives SpeechBrain's embeddings. Dilations cannot be read from shapes: SpeechBrain's defaults (1, 2, 3, 4, 1)
are assumed, as every published ECAPA recipe uses. Fine-tune it with `train.init_from`.
Out: a spkcausal ECAPA's extractor weights as such a state dict (SpeechBrain's ECAPA_TDNN loads it).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..nn.checkpoint import load_checkpoint
from ..utils import DataError, PathLike, UsageError, atomic_path

SB_FILE = "embedding_model.ckpt"


def _load_state(src: PathLike) -> tuple[dict[str, torch.Tensor], Path]:
    path = Path(src)
    if path.is_dir():
        path = path / SB_FILE
    if not path.is_file():
        raise DataError("no SpeechBrain embedding_model.ckpt here", path)
    # the checkpoint loader's refusals: one line each, never torch's advice to set weights_only=False
    state = load_checkpoint(path, expected="expected SpeechBrain's embedding_model.ckpt (a torch state dict)")
    if not isinstance(state, dict) or "blocks.0.conv.conv.weight" not in state:
        raise DataError("not a SpeechBrain ECAPA_TDNN state dict (no blocks.0.conv.conv.weight)", path)
    return state, path


def ecapa_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """ECAPA_TDNN constructor arguments read from a state dict's shapes."""
    n_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    first = state["blocks.0.conv.conv.weight"]
    channels = [int(first.shape[0])] + [int(state[f"blocks.{i}.tdnn1.conv.conv.weight"].shape[0])
                                        for i in range(1, n_blocks)] + [int(state["mfa.conv.conv.weight"].shape[0])]
    kernels = [int(first.shape[2])] + [int(state[f"blocks.{i}.res2net_block.blocks.0.conv.conv.weight"].shape[2])
                                       for i in range(1, n_blocks)] + [int(state["mfa.conv.conv.weight"].shape[2])]
    scale = 1 + sum(1 for k in state if re.fullmatch(r"blocks\.1\.res2net_block\.blocks\.\d+\.conv\.conv\.weight", k))
    asp_in = int(state["asp.tdnn.conv.conv.weight"].shape[1])
    return {"n_mels": int(first.shape[1]), "channels": channels, "kernel_sizes": kernels,
            "attention_channels": int(state["asp.tdnn.conv.conv.weight"].shape[0]),
            "se_channels": int(state["blocks.1.se_block.conv1.conv.weight"].shape[0]),
            "res2net_scale": scale, "global_context": asp_in == 3 * channels[-1],
            "lin_neurons": int(state["fc.conv.weight"].shape[0])}


def import_speechbrain(src: PathLike, out: PathLike, sample_rate: int = 16000) -> Path:
    """Write a spkcausal checkpoint (config + extractor, no head) from a SpeechBrain embedding_model.ckpt."""
    from ..nn.checkpoint import save_checkpoint
    from ..nn.config import merge_defaults
    from ..nn.network import build_extractor

    state, path = _load_state(src)
    arch = ecapa_arch(state)
    n_mels = arch.pop("n_mels")
    model_cfg = {"name": "ecapa512", "embed_dim": arch.pop("lin_neurons"), **arch}
    cfg = merge_defaults({"data": {"sample_rate": sample_rate}, "model": model_cfg,
                          "features": {"frontend": "speechbrain", "n_mels": n_mels}})
    model = build_extractor(cfg)
    try:
        model.net.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"shapes read from the state dict do not rebuild it ({e})", path) from None
    return save_checkpoint({"config": cfg, "model": model.state_dict(), "head": None, "speakers": [],
                            "imported_from": {"format": "speechbrain", "path": str(path.resolve())}}, out)


def export_speechbrain(path: PathLike, out: PathLike) -> Path:
    """Write a spkcausal ECAPA checkpoint's extractor as a SpeechBrain ECAPA_TDNN `embedding_model.ckpt`."""
    from ..nn.assemble import assemble
    from ..nn.models.ecapa import EcapaTDNN

    trained = assemble(path, need_head=False)
    net = getattr(trained.model, "net", None)
    if not isinstance(net, EcapaTDNN):
        raise UsageError(f"only ECAPA models export to SpeechBrain; this is {trained.config['model']['name']!r}")
    if trained.config["features"].get("frontend", "kaldi") != "speechbrain":
        import logging

        logging.getLogger("spkcausal").warning(
            "this model was trained on Kaldi fbank: SpeechBrain's own Fbank front-end will not match it; feed it "
            "spkcausal.nn.features.Fbank features")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    return out
