"""Inference commands on a trained model: embed (files, dirs, wav.scp), verify (two files), set-threshold."""
from __future__ import annotations

import argparse

from . import alpha_or_stored, count, finite_float


def _embed(args: argparse.Namespace) -> int:
    from ..inference.api import embed_to_store
    from ..utils import check_writable

    check_writable(args.out)
    print(embed_to_store(args.model, args.inputs, args.out, tde_alpha=args.tde_alpha, mean_sub=args.mean_sub,
                         ark=args.ark, device=args.device, batch_seconds=args.batch_seconds,
                         num_workers=args.num_workers, short="repeat" if args.repeat_short else "error"))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..inference.api import THRESHOLD_FILE, load_model
    from ..utils import UsageError

    m = load_model(args.model, device=args.device)
    if args.threshold is None:
        if args.tde_alpha is not None or args.mean_sub:
            raise UsageError("the stored threshold fixes the scoring it was set for; give --threshold to score "
                             "with --tde-alpha / --mean-sub")
        threshold, rec = m.threshold()
        alpha, mean_sub = rec.get("tde_alpha"), bool(rec.get("mean_sub"))
        source = f"{rec['kind']} threshold stored in {m.exp_dir / THRESHOLD_FILE} (from {rec.get('scores')})"
    else:
        threshold, alpha, mean_sub, source = args.threshold, args.tde_alpha, args.mean_sub, "--threshold"
    score = m.score(args.a, args.b, tde_alpha=alpha, mean_sub=mean_sub)
    scoring = "cosine" + (f" + TDE (alpha {m._resolve_alpha(alpha):g})" if alpha is not None else "") + \
        (" + mean subtraction" if mean_sub else "")
    print(f"score {score:.4f}  {'accept' if score >= threshold else 'reject'}  "
          f"(threshold {threshold:.4f}: {source}; scoring: {scoring})")
    return 0


def _set_threshold(args: argparse.Namespace) -> int:
    import json

    from ..inference.api import set_threshold

    rec = set_threshold(args.exp, args.scores, tde_alpha=args.tde_alpha, mean_sub=args.mean_sub,
                        calibration=args.calibration, p_target=args.p_target)
    print(json.dumps(rec, indent=1))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CKPT_OR_EXP", help="experiment dir (avg_model.pt, else newest checkpoint) or "
                                                        "checkpoint file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tde-alpha", default=None, type=alpha_or_stored, metavar="ALPHA|stored",
                   help="apply TDE (Causal Norm heads) with this alpha, or the one stored in the experiment")
    p.add_argument("--mean-sub", action="store_true", help="subtract the training-set mean (stored with the "
                                                            "experiment: emb/<train dir>)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add embed, verify and set-threshold."""
    p = sub.add_parser("embed", help="embeddings of audio files, directories or a wav.scp with a trained model",
                       description="Files at any sample rate are resampled; channels are averaged. Keys: a file's "
                                   "name, a directory's relative paths (no extension), a wav.scp's keys.")
    _model_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, directory (recursive) or wav.scp")
    p.add_argument("--out", required=True, help="output embedding store (directory)")
    p.add_argument("--ark", action="store_true", help="also write OUT/xvector.ark + xvector.scp (Kaldi)")
    _scoring_args(p)
    p.add_argument("--repeat-short", action="store_true",
                   help="repeat inputs shorter than 0.5 s up to it (as the recipes do) instead of failing")
    p.add_argument("--batch-seconds", type=finite_float, default=200.0, help="audio seconds per batch (default 200)")
    p.add_argument("--num-workers", type=count, default=2, help="DataLoader workers reading audio (default 2)")
    p.set_defaults(func=_embed)

    p = sub.add_parser("verify", help="score two audio files and accept / reject",
                       description="Without --threshold, uses the threshold stored with the model (threshold.json, "
                                   "written by set-threshold) and the scoring it was set for.")
    _model_args(p)
    p.add_argument("a", metavar="A.wav")
    p.add_argument("b", metavar="B.wav")
    p.add_argument("--threshold", type=finite_float, default=None, help="accept when score >= this")
    _scoring_args(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser("set-threshold", help="store the EER (or calibrated Bayes) threshold of dev scores with a model",
                       description="Writes EXP/threshold.json (threshold at the EER of the labelled dev scores, "
                                   "and the scoring they were made with) for `verify` and the Python API.")
    p.add_argument("exp", metavar="EXP_DIR")
    p.add_argument("--scores", required=True, help="labelled dev score file (enroll test score target|nontarget)")
    p.add_argument("--tde-alpha", type=finite_float, default=None, help="the scores are TDE'd with this alpha")
    p.add_argument("--mean-sub", action="store_true", help="the scores use mean subtraction")
    p.add_argument("--calibration", metavar="MODEL.json",
                   help="a linear calibration of these scores (spkcausal calibrate): store the raw score at which "
                   "the calibrated LLR reaches the Bayes threshold -logit(p_target) instead of the EER threshold")
    p.add_argument("--p-target", type=finite_float, help="target prior of that decision (default: the calibration's)")
    p.set_defaults(func=_set_threshold)
