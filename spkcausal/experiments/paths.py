"""Paths that experiment files store, so that an experiment tree can be moved or copied (docs/design.md section 7).

An experiment dir `E` belongs to an *experiment tree*: the dir that holds its experiments dir, `<root>/exp/E` in
the recipes' layout, where the data dirs (`<root>/data/...`) live too (`tree_root`). A path that a JSON side file
of `E` stores (results.json: score files, utt2spk, training dir, predictions, ...) is written

- relative to `E` when the file lies inside the tree: `scores/cosine/veri.score`, `../../data/test/utt2spk`;
- absolute when it lies outside (a corpus shared by several trees): moving the tree keeps pointing at it.

Read back (`locate`), a relative path is joined to where `E` is *now*: a moved tree finds its own files, and a
copy finds the copy's, never the original's, whether or not the original still exists.

Files of format version 1 stored paths as given (absolute, or relative to the cwd of the command that wrote
them). They are read as before, except that a file inside *an experiment dir of E's name* (`.../exp/E/rest`, the
original of a copy or the old place of a moved tree) is `E/rest` where E is now, and any other path that is not
inside E's tree is first looked for inside it by its longest trailing part (`E/<tail>`, then `<root>/<tail>`):
a same-named file inside the tree wins over the one outside, which is read only when the tree has none.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..utils import PathLike

__all__ = ["tree_root", "stored_path", "locate", "Kind"]

Kind = Literal["file", "dir", "any"]


def tree_root(exp_dir: PathLike) -> Path:
    """The experiment tree of an experiment dir: the dir above its parent (`<root>` of `<root>/exp/E`), or a
    lower one where that would be the filesystem root (a tree must not be the whole disk)."""
    e = Path(exp_dir).resolve()
    for cand in (e.parent.parent, e.parent):
        if cand.parent != cand:
            return cand
    return e


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _absolute(path: PathLike) -> Path:
    """`path` as the user gave it (absolute, or relative to the cwd), absolute and without `..`."""
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def stored_path(path: PathLike, exp_dir: PathLike) -> str:
    """How an experiment's side file stores `path` (absolute or relative to the cwd): relative to the experiment
    dir (POSIX separators) when the file lies inside the experiment's tree, else absolute."""
    p, e = _absolute(path), Path(exp_dir).resolve()
    if not _inside(p, tree_root(e)):
        return str(p)
    return Path(os.path.relpath(p, e)).as_posix()


def _exists(path: Path, kind: Kind) -> bool:
    return path.is_file() if kind == "file" else path.is_dir() if kind == "dir" else path.exists()


def locate(stored: str, exp_dir: PathLike, legacy: bool = False, kind: Kind = "file") -> tuple[Path, bool]:
    """(where a stored path is now, whether it exists there as a `kind`); `legacy`: a format-1 path (module
    docstring). A path that is not found comes back as the place it should be, for the error to name."""
    e = Path(exp_dir).resolve()
    p = Path(stored).expanduser()
    if not legacy:
        q = Path(os.path.normpath(e / p))  # `..` against the dir's current place, not through a symlink
        return q, _exists(q, kind)
    q = _absolute(p)  # as format 1 read it: relative to the cwd
    root = tree_root(e)
    parts = q.parts
    for i in range(len(parts) - 2, 0, -1):  # the last `<exp parent name>/<exp name>` in the path
        if parts[i - 1:i + 1] == (e.parent.name, e.name):
            own = e.joinpath(*parts[i + 1:])  # a file of (a copy of) this experiment: here, never elsewhere
            return own, _exists(own, kind)
    if _inside(q, root) and _exists(q, kind):
        return q, True
    for base in (e, root):
        for k in range(len(parts) - 1, 0, -1):  # longest trailing part first
            cand = base.joinpath(*parts[-k:])
            if _exists(cand, kind):
                return cand, True
    return q, _exists(q, kind)
