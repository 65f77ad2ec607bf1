"""Results folders on disk: their layout, atomic writes, an exclusive lock, and what happens to damaged files.

::

    <out>/config.json                     the resolved config and its hash (a folder belongs to one config)
    <out>/.lock                           held by the run that writes the folder (pid, host, start)
    <out>/learners/<label>/checkpoint.npz the carried state and host sums after the last chunk (while running)
    <out>/learners/<label>/progress.json  steps done, seed-steps/s
    <out>/learners/<label>/results.npz    curves, final metrics, divergence steps, swept values (when done)
    <out>/learners/<label>/summary.json   parameters, FLOPs, speed, credit-assignment path (when done)
    <out>/learners/<label>/shards/        a Ray run's per-task state until the learner is done
                                          (shards.json: the runs of each task; <start>-<stop>/checkpoint.npz)

Every file is written to a temporary name in the same folder and moved into place, with the permissions the
user's umask gives. A damaged file is never a traceback: a damaged checkpoint or result of one learner is moved
aside (``<name>.damaged``) with a warning and that learner is computed again (results are deterministic, so
nothing is lost but time); a damaged ``config.json`` stops the run with one line naming the file.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from online_rnn.experiment.schema import ConfigError, Experiment

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
CHECKPOINT = "checkpoint.npz"
PROGRESS = "progress.json"
RESULTS = "results.npz"
SUMMARY = "summary.json"
SHARDS = "shards"
FORMAT_VERSION = 1

_UMASK = os.umask(0)
os.umask(_UMASK)


class DamagedFile(ConfigError):
    """A results-folder file that cannot be read."""


class RecoveredFile(UserWarning):
    """A damaged file was moved aside and its contents will be computed again."""


# ------------------------------------------------------------------------------------------------ writing


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` it into place (mode from the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda fh: fh.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode()))


def write_npz(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


# ------------------------------------------------------------------------------------------------ reading


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFile(f"{path} is damaged ({type(err).__name__}: {err})") from None


def read_npz(path: Path, keys: Optional[list[str]] = None) -> dict:
    """Every array of an ``.npz`` file (``keys``: these must be there)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise DamagedFile(f"{path} is damaged ({type(err).__name__}: {err})") from None
    missing = [k for k in keys or [] if k not in data]
    if missing:
        raise DamagedFile(f"{path} is damaged (no {missing[0]!r})")
    return data


def set_aside(path: Path, why: str) -> None:
    """Move a damaged file to ``<name>.damaged`` and warn that it will be computed again."""
    os.replace(path, path.with_name(path.name + ".damaged"))
    warnings.warn(RecoveredFile(f"{why}; moved it to {path.name}.damaged and will compute it again"), stacklevel=2)


# ------------------------------------------------------------------------------------------------ folders


def group_dir_name(label: str) -> str:
    """Where a learner's files live inside a results folder."""
    return f"learners/{label}"


def group_dir(out: Path, label: str) -> Path:
    return out / group_dir_name(label)


def check_results_folder(out: Path, exp: Experiment) -> None:
    """Refuse a results folder that holds results of a different config (one line naming the first differing
    keys), or whose config file is damaged."""
    stored = out / CONFIG_FILE
    if not stored.exists():
        if out.exists() and any(p.suffix == ".npz" for p in out.rglob("*.npz")):
            raise ConfigError(f"results folder {out} holds results but no {CONFIG_FILE}; use another --out")
        return
    try:
        data = read_json(stored)
    except DamagedFile as err:
        raise ConfigError(f"{err}: the folder's config is unknown, so its results cannot be trusted; use another "
                          f"--out or delete the folder") from None
    if not isinstance(data, dict) or data.get("hash") != exp.hash:
        theirs = data.get("config", {}) if isinstance(data, dict) else {}
        diff = sorted(_differences(theirs, exp.resolved), key=lambda k: (k.count("."), k))
        where = f" (differs at: {', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})" if diff else ""
        raise ConfigError(
            f"results folder {out} belongs to a different config{where}; use another --out or delete the folder"
        )


def write_config(out: Path, exp: Experiment) -> None:
    write_json(out / CONFIG_FILE, {"hash": exp.hash, "config": exp.resolved, "format": FORMAT_VERSION})


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}" if path else key)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _differences(x, y, f"{path}.{i}")
        return out
    return [] if a == b else [path or "<root>"]


class FolderLock:
    """An exclusive lock on a results folder for the duration of a run (``with FolderLock(out): ...``): a
    second run into the same folder is refused in one line naming the holder. An advisory ``fcntl`` lock,
    released by the system when the holder dies (a killed run leaves no stale lock)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self.fh: Any = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise ConfigError(f"results folder {self.path.parent} is in use by another run ({holder}); wait for it "
                              f"to finish or use another --out") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            import fcntl

            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


# ----------------------------------------------------------------------------------- checkpoints and results


def save_checkpoint(path: Path, leaves: list[np.ndarray], sums: dict, meta: dict) -> None:
    arrays = {f"leaf_{i:04d}": leaf for i, leaf in enumerate(leaves)}
    arrays.update(sums)
    arrays["meta"] = np.array(json.dumps({**meta, "n_leaves": len(leaves)}))
    write_npz(path, arrays)


def load_checkpoint(path: Path, exp_hash: str, label: str) -> Optional[tuple[list[np.ndarray], dict, dict]]:
    """``(leaves, arrays, meta)`` of a checkpoint, ``None`` if there is none or it is damaged (moved aside:
    the learner starts over). A checkpoint of another config is refused."""
    if not path.exists():
        return None
    try:
        data = read_npz(path, ["meta"])
        meta = json.loads(str(data["meta"]))
        leaves = [data[f"leaf_{i:04d}"] for i in range(int(meta["n_leaves"]))]
    except DamagedFile as err:
        set_aside(path, str(err))
        return None
    except (KeyError, ValueError, TypeError) as err:
        set_aside(path, f"{path} is damaged ({type(err).__name__}: {err})")
        return None
    if meta.get("hash") != exp_hash or meta.get("label") != label:
        raise ConfigError(f"checkpoint {path} belongs to a different config; delete it to start over")
    return leaves, data, meta


def results_done(folder: Path) -> bool:
    """Whether a learner's results are complete and readable; damaged ones are moved aside (to be redone)."""
    results, summary = folder / RESULTS, folder / SUMMARY
    if not results.exists() and not summary.exists():
        return False
    for path, read in ((results, read_npz), (summary, read_json)):
        if not path.exists():
            other = summary if path is results else results
            if other.exists():
                set_aside(other, f"{path} is missing beside {other.name}")
            return False
        try:
            read(path)
        except DamagedFile as err:
            set_aside(path, str(err))
            other = summary if path is results else results
            if other.exists():
                os.replace(other, other.with_name(other.name + ".damaged"))
            return False
    return True
