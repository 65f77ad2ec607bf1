#!/usr/bin/env python3
"""Set up the project's environment and run it.

    python3 dev.py demo [args]   create .venv (if needed), install online_rnn into it, run the demo
    python3 dev.py test [args]   create .venv (if needed), install online_rnn[test] into it, run the test suite

Needs only Python >= 3.10 and access to PyPI. The environment lives in .venv at the project root; it is
reinstalled when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".online_rnn-install"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env() -> Path:
    if sys.version_info < (3, 10):
        sys.exit(f"online_rnn needs Python >= 3.10, this is {sys.version.split()[0]}")
    py = _python()
    if not py.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        print("[dev] installing online_rnn[test] into .venv (first run takes a minute or two)", flush=True)
        subprocess.check_call([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
        subprocess.check_call([str(py), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"])
        STAMP.write_text(want)
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    py = ensure_env()
    os.chdir(ROOT)
    if command == "setup":
        return 0
    if command == "demo":
        return subprocess.call([str(py), "-m", "online_rnn.demo", *rest])
    # loadgroup: tests marked xdist_group(name) share one worker (the Ray tests share one cluster); others as "load"
    workers = ["-n", "auto", "--dist", "loadgroup"] if not any(a.startswith("-n") for a in rest) else []
    return subprocess.call([str(py), "-m", "pytest", *workers, *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
