"""Model exchange commands: export (torch.export / ONNX / TorchScript), import-checkpoint, import-speechbrain,
export-speechbrain."""
from __future__ import annotations

import argparse

from . import alpha_or_stored, positive_int


def _export(args: argparse.Namespace) -> int:
    from ..inference.export import export_model
    from ..utils import check_writable

    check_writable(args.out)
    print(export_model(args.model, args.out, args.format, with_features=args.with_features, tde_alpha=args.tde,
                       mean_sub=args.mean_sub))
    return 0


def _import_sb(args: argparse.Namespace) -> int:
    from ..inference.speechbrain_io import import_speechbrain

    print(import_speechbrain(args.src, args.out, sample_rate=args.sample_rate))
    return 0


def _model_args(items: list[str]) -> dict:
    """`k=v` pairs (YAML values) as a dict; a pair without `=` is a UsageError."""
    import yaml

    from ..utils import UsageError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-args {item!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def _import_ckpt(args: argparse.Namespace) -> int:
    from ..inference.toolkit_io import import_checkpoint

    print(import_checkpoint(args.toolkit, args.src, args.model, args.out, _model_args(args.model_args)))
    return 0


def _export_sb(args: argparse.Namespace) -> int:
    from ..inference.speechbrain_io import export_speechbrain

    print(export_speechbrain(args.model, args.out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add export, import-speechbrain and export-speechbrain."""
    p = sub.add_parser("export", help="torch.export / ONNX / TorchScript embedder (waveform or fbank in, embedding "
                                      "out)",
                       description="Inputs: wave (B, T) [or feats (B, F, n_mels)] and lengths (B,) int64; output: "
                                   "embedding (B, D). Dynamic batch and time axes; see docs/inference.md.")
    p.add_argument("model", metavar="CKPT_OR_EXP")
    p.add_argument("--format", choices=("pt2", "onnx", "torchscript"), default="pt2",
                   help="pt2: a torch.export program (default; torch.export.load(f).module()); onnx; torchscript: "
                        "opt-in, deprecated by torch 2.14 (it warns so)")
    p.add_argument("--out", required=True, help="output file (.pt2, .onnx, .pt for TorchScript)")
    p.add_argument("--with-features", action="store_true", help="waveform in (Kaldi fbank in the graph); default: "
                                                                 "fbank in")
    p.add_argument("--tde", default=None, type=alpha_or_stored, metavar="ALPHA|stored",
                   help="fold TDE with this alpha into the graph")
    p.add_argument("--mean-sub", action="store_true", help="fold the training-set mean subtraction into the graph")
    p.set_defaults(func=_export)

    p = sub.add_parser("import-speechbrain", help="a SpeechBrain ECAPA-TDNN embedding_model.ckpt -> spkcausal ckpt")
    p.add_argument("src", metavar="CKPT_OR_DIR", help="embedding_model.ckpt or a directory holding it")
    p.add_argument("--out", required=True, help="spkcausal checkpoint to write")
    p.add_argument("--sample-rate", type=positive_int, default=16000, help="the model's sample rate (default 16000)")
    p.set_defaults(func=_import_sb)

    p = sub.add_parser("import-checkpoint", help="a wespeaker / 3D-Speaker / SpeechBrain extractor checkpoint -> "
                                                 "experiment dir (config.yaml + avg_model.pt, no head)",
                       description="Reads the file with torch.load(weights_only=True) only; every key must map onto "
                                   "--model's parameters with the same shape (docs/models.md).")
    p.add_argument("--from", dest="toolkit", required=True, choices=("wespeaker", "3dspeaker", "speechbrain"))
    p.add_argument("src", metavar="PATH", help="the checkpoint file (avg_model.pt, embedding_model.ckpt, ...) or "
                                               "the directory holding it")
    p.add_argument("--model", help="our registered model name to load it into (docs/models.md lists them); "
                                    "required except for speechbrain, whose ECAPA is read from the shapes")
    p.add_argument("--out", required=True, help="experiment dir to write")
    p.add_argument("--model-args", nargs="*", default=[], metavar="K=V",
                   help="factory arguments the shapes do not decide (widths, n_mels=72, ...)")
    p.set_defaults(func=_import_ckpt)

    p = sub.add_parser("export-speechbrain", help="a spkcausal ECAPA -> SpeechBrain embedding_model.ckpt")
    p.add_argument("model", metavar="CKPT_OR_EXP")
    p.add_argument("--out", required=True, help="state dict file to write (embedding_model.ckpt)")
    p.set_defaults(func=_export_sb)
