"""Training checkpoints: atomic writes, a `latest` pointer, exact-resume RNG state, pruning and averaging.

Layout under `<exp_dir>/checkpoints/`: `step_SSSSSSSS.pt` (every N steps, mid-epoch), `epoch_EEEE.pt` (end
of epoch EEEE, 1-based) and `latest` (a one-line text file naming the newest checkpoint, written after it).
Every file is written to a temporary name and renamed, so any `*.pt` present is complete. Everything stored
is a tensor or a plain Python type, so `torch.load(..., weights_only=True)` (the only way this package
loads) reads it.
"""
from __future__ import annotations

import logging
import random
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import DataError, PathLike, UsageError, atomic_path, output_error, write_text_atomic

log = logging.getLogger("spkcausal.nn.checkpoint")

LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


# ------------------------------------------------------------------ RNG state as tensors / plain types


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch CPU, CUDA and (optionally) an extra generator's state, weights_only-loadable."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what `rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ------------------------------------------------------------------ files


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu", expected: str | None = None
                    ) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True), its zip members' CRCs checked first (torch does not check
    them: a damaged directory entry loads as garbage weights); a refused or broken file is one line naming it
    and `expected` (by default: a checkpoint written by spkcausal)."""
    expected = expected or _EXPECTED
    _check_crcs(Path(path), expected)
    try:
        with warnings.catch_warnings():  # torch's plea to file an issue about a plain pickle: the refusal says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError("checkpoint not found", path) from None
    except IsADirectoryError:
        raise DataError("is a directory; expected a checkpoint file (.pt)", path) from None
    except Exception as e:  # torch's own text runs to several lines and advises weights_only=False: never pass it on
        raise DataError(_refusal(Path(path), e, expected), path) from None


def load_state_checked(module: torch.nn.Module, state: Any, source: PathLike, part: str, saved: str,
                       built: str) -> None:
    """`module.load_state_dict(state)` (strict), refused in one line (DataError naming `source`) at the first key
    that is unexpected, missing or of another shape, with both architectures: `saved`, what the checkpoint's
    config names for this `part` ('model', 'head'), and `built`, what was built to take it."""
    from .importers import shape_text

    own = module.state_dict()
    cls = type(module).__name__
    archs = (f"the checkpoint's {part} is {saved!r}, this builds {built!r} ({cls}): a checkpoint of another "
             "architecture or size?" if saved != built else
             f"the checkpoint's config names {part} {saved!r}, but its weights do not fit the {cls} built from it "
             "(weights of another architecture or size)")
    if not isinstance(state, dict):
        raise DataError(f"the {part!r} entry is {type(state).__name__}; expected a state dict", source)
    for key, value in state.items():
        if key not in own:
            raise DataError(f"unexpected {part} key {key!r} {shape_text(value) if torch.is_tensor(value) else ''}; "
                            f"{archs}", source)
        if torch.is_tensor(value) and tuple(value.shape) != tuple(own[key].shape):
            raise DataError(f"{part} key {key!r} has shape {shape_text(value)}, expected {shape_text(own[key])}; "
                            f"{archs}", source)
    missing = [k for k in own if k not in state]
    if missing:
        raise DataError(f"{part} key {missing[0]!r} {shape_text(own[missing[0]])} missing ({len(missing)} keys); "
                        f"{archs}", source)
    module.load_state_dict(state)


def _check_crcs(path: Path, expected: str) -> None:
    """DataError when a torch zip archive has a member that fails its CRC-32 or does not match its directory
    entry; files that are no zip at all are left to torch.load (and _refusal) to name."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            # torch's zip reader returns a member flagged as a directory (MS-DOS attribute 0x10) as
            # uninitialised memory: a silently wrong tensor, so such an entry is damage
            flagged = [i.filename for i in z.infolist() if i.external_attr & 0x10 or i.is_dir()]
            names = z.namelist()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return  # torch.load's handlers name these
    except zipfile.BadZipFile as e:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return  # not a zip: a pickle, text, ...
        raise DataError(f"truncated or corrupt checkpoint ({e})", path) from None
    except Exception as e:  # zipfile meets a damaged directory in many ways (UnicodeDecodeError, EOFError, ...)
        raise DataError(f"truncated or corrupt checkpoint ({type(e).__name__})", path) from None
    if bad is not None:
        raise DataError(f"damaged checkpoint: {bad} fails its CRC check", path)
    if flagged:
        raise DataError(f"damaged checkpoint: {flagged[0]} is marked as a directory in the zip directory", path)
    if _torchscript(names):  # refused before torch.load, which would print its two-line dispatch warning
        raise DataError(_torchscript_refusal(expected), path)


_EXPECTED = "expected a checkpoint written by spkcausal (torch.save of tensors and plain Python types)"


def _torchscript_refusal(expected: str) -> str:
    return f"a TorchScript model (torch.jit.save / spkcausal export), not a checkpoint; {expected}"


def _torchscript(names: Sequence[str]) -> bool:
    """True for the members of a TorchScript archive (its code and constants)."""
    return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") for n in names)


def _refusal(path: Path, e: Exception, expected: str) -> str:
    """What the file is and what was expected, in one line, from its first bytes and torch's complaint."""
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        names = zipfile.ZipFile(path).namelist() if head == b"PK\x03\x04" else []
    except Exception:  # zipfile fails on a damaged directory in several ways (BadZipFile, UnicodeDecodeError...)
        names = None
    if not head:
        return f"empty file; {expected}"
    if head[:1] == b"\x80":
        return f"a plain pickle, not a torch zip checkpoint; refused (unpickling can run code); {expected}"
    if names is None or (head == b"PK\x03\x04" and not names):
        return f"truncated or corrupt checkpoint (not a complete zip archive); {expected}"
    if _torchscript(names):
        return _torchscript_refusal(expected)
    if head != b"PK\x03\x04":
        return f"not a torch checkpoint (starts with {head!r}); {expected}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "weights_only" in str(e) or "Unsupported global" in str(e):
        return f"holds objects other than tensors and plain Python types (e.g. numpy arrays); refused; {expected}"
    return f"cannot load checkpoint ({type(e).__name__}: {first[:200]}); {expected}"


class _Recorder:
    """A file whose write errors are remembered: torch.save turns them into a RuntimeError without the errno."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        """Write through, keeping the OSError (ENOSPC) torch would hide."""
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def save_checkpoint(state: dict[str, Any], path: PathLike) -> Path:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves a partial `path`; a full
    disk is one line naming `path` (OutputError), not torch's text."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        rec = _Recorder(f)
        try:
            torch.save(state, rec)
            f.flush()
        except RuntimeError:
            if rec.error is None:
                raise
            raise output_error(rec.error, path) from None
    return path


def checkpoint_name(step: int, epoch_end: int | None = None) -> str:
    """`epoch_EEEE.pt` at the end of epoch `epoch_end` (1-based), otherwise `step_SSSSSSSS.pt`."""
    return f"epoch_{epoch_end:04d}.pt" if epoch_end is not None else f"step_{step:08d}.pt"


def write_latest(ckpt_dir: PathLike, name: str) -> None:
    """Point `latest` at a checkpoint that is already complete on disk."""
    write_text_atomic(Path(ckpt_dir) / LATEST, name + "\n")


def list_checkpoints(ckpt_dir: PathLike, kind: str = "all") -> list[Path]:
    """Checkpoint files of a directory: kind 'step', 'epoch' or 'all'; step files by step, epoch files by epoch."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    steps = sorted((p for p in ckpt_dir.iterdir() if _STEP_RE.match(p.name)),
                   key=lambda p: int(_STEP_RE.match(p.name).group(1)))
    epochs = sorted((p for p in ckpt_dir.iterdir() if _EPOCH_RE.match(p.name)),
                    key=lambda p: int(_EPOCH_RE.match(p.name).group(1)))
    return {"step": steps, "epoch": epochs, "all": steps + epochs}[kind]


def find_resume_checkpoint(ckpt_dir: PathLike) -> Path | None:
    """The newest complete checkpoint: the one `latest` names if it loads, else the loadable one with most steps."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        candidate = ckpt_dir / name
        if name and candidate.is_file():
            try:
                load_checkpoint(candidate)
                return candidate
            except DataError as e:
                log.warning("latest checkpoint unusable, scanning the others: %s", e)
    best, best_step = None, -1
    for path in list_checkpoints(ckpt_dir):
        try:
            step = int(load_checkpoint(path)["step"])
        except (DataError, KeyError) as e:
            log.warning("ignoring checkpoint %s: %s", path, e)
            continue
        if step > best_step:
            best, best_step = path, step
    return best


def remove_partial(ckpt_dir: PathLike) -> list[Path]:
    """Delete temporary files left by saves that were interrupted (call only when no save is running)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    partial = [p for p in ckpt_dir.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    for p in partial:
        p.unlink(missing_ok=True)
    if partial:
        log.warning("removed %d partial checkpoint file(s) of an interrupted save in %s", len(partial), ckpt_dir)
    return partial


def prune_checkpoints(ckpt_dir: PathLike, keep_last: int, keep_epochs: int = 0) -> list[Path]:
    """Delete all but the newest `keep_last` step files and `keep_epochs` epoch files (0: keep every epoch)."""
    ckpt_dir = Path(ckpt_dir)
    latest = (ckpt_dir / LATEST).read_text(encoding="utf-8").strip() if (ckpt_dir / LATEST).is_file() else None
    removed = []
    for kind, keep in (("step", keep_last), ("epoch", keep_epochs)):
        files = list_checkpoints(ckpt_dir, kind)
        if keep <= 0 and kind == "epoch":
            continue
        for path in files[: max(0, len(files) - max(keep, 0))]:
            if path.name != latest:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ------------------------------------------------------------------ averaging


def _last_stage(paths: Sequence[PathLike]) -> list[PathLike]:
    """The checkpoints of the last one's training stage: a two-stage head (OLTR) keeps its stage in the head
    entry `stage`, and a mean across the switch would mix a memory with the zeros it replaced."""
    if (load_checkpoint(paths[-1]).get("head") or {}).get("stage") is None:  # one-stage heads: one extra read
        return list(paths)
    stages = [(load_checkpoint(p).get("head") or {}).get("stage") for p in paths]
    keep = [p for p, s in zip(paths, stages) if s is not None and int(s) == int(stages[-1])]
    if len(keep) < len(paths):
        log.warning("averaging %d of %d checkpoints: the others are from an earlier training stage", len(keep),
                    len(paths))
    return keep


def average_checkpoints(paths: Sequence[PathLike], keys: Sequence[str] = ("model", "head")) -> dict[str, Any]:
    """Element-wise mean of the float tensors under `keys` (weights, BN statistics, x_bar) over `paths`.

    Integer tensors (BatchNorm's num_batches_tracked) are taken from the last checkpoint. Returns
    {key: state_dict} plus `averaged_from` and, when present in the last checkpoint, its `config`.
    """
    if not paths:
        raise UsageError("no checkpoints to average")
    paths = _last_stage(paths)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    last: dict[str, Any] = {}
    for i, path in enumerate(paths):
        ckpt = load_checkpoint(path)
        for key in keys:
            if key not in ckpt:
                raise DataError(f"checkpoint has no {key!r} state", path)
            sd = ckpt[key]
            if i == 0:
                sums[key] = {n: t.double().clone() if t.is_floating_point() else t.clone() for n, t in sd.items()}
                continue
            if set(sd) != set(sums[key]):
                raise DataError(f"{key!r} state has different entries than {paths[0]}", path)
            for n, t in sd.items():
                if t.is_floating_point():
                    sums[key][n] += t.double()
                else:
                    sums[key][n] = t.clone()
        last = ckpt
    out: dict[str, Any] = {}
    for key in keys:
        ref = last[key]
        out[key] = {n: (t / len(paths)).to(ref[n].dtype) if t.is_floating_point() else t
                    for n, t in sums[key].items()}
    out["averaged_from"] = [str(p) for p in paths]
    for extra in ("config", "speakers", "num_speakers"):
        if extra in last:
            out[extra] = last[extra]
    return out


def average_experiment(exp_dir: PathLike, num: int, out: PathLike | None = None,
                       paths: Sequence[PathLike] | None = None) -> Path:
    """Average the last `num` epoch checkpoints of `exp_dir` (or the given paths) into `avg_model.pt`."""
    exp_dir = Path(exp_dir)
    if paths is None:
        epochs = list_checkpoints(exp_dir / "checkpoints", "epoch")
        if not epochs:
            raise DataError("no epoch checkpoints (epoch_EEEE.pt) to average", exp_dir / "checkpoints")
        paths = epochs[-num:]
        if len(paths) < num:
            log.warning("only %d epoch checkpoints available; averaging those", len(paths))
    out = Path(out) if out is not None else exp_dir / "avg_model.pt"
    state = average_checkpoints(paths)
    save_checkpoint(state, out)
    used = state["averaged_from"]  # a two-stage run's earlier stage is left out (_last_stage)
    log.info("averaged %d checkpoints into %s: %s", len(used), out, ", ".join(Path(p).name for p in used))
    return out
