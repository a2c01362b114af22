"""Small shared helpers: atomic file writes and quiet imports of noisy libraries (torch-free)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from quantir.errors import OutputError

# Temporary files of atomic writes: hidden, with no image or model suffix (no folder scan picks one
# up as an input) and the writer's pid, so leftovers of a killed process can be told apart from the
# live temporaries of another process writing into the same folder.
TEMP_SUFFIX = ".quantir-tmp"
_TEMP_RE = re.compile(rf"^\..+\.(\d+)\.[^.]+{re.escape(TEMP_SUFFIX)}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nearest_existing_dir(path: Path) -> Path:
    """``path`` itself when it exists, else its closest existing ancestor."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, what: str = "output") -> None:
    """One-line OutputError unless ``path`` (a file to be written) can be created or replaced."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: cannot write: is a directory, not a file")
    parent = nearest_existing_dir(p.parent)
    if not parent.is_dir():
        raise OutputError(f"{p}: cannot write: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: cannot write: {what} folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    The result gets the permissions a plain ``open()`` would give it (0666 minus the umask), not
    mkstemp's private 0600. On any exception, SystemExit from SIGTERM included, the temporary is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temporaries that killed quantir processes left in ``folder``; live writers' are kept."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def silence_stderr():
    """Silence C-level stderr (torchao prints CUDA-kernel load failures; TFLite logs its delegate)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def import_torchao():
    """Import torchao's PT2E bits once, without its harmless CUDA-kernel warnings on CPU machines."""
    import logging
    import warnings

    with silence_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torchao").setLevel(logging.ERROR)
        import torchao.quantization.pt2e  # noqa: F401


def peak_rss_kb() -> int | None:
    """This process's peak resident memory in kB: VmHWM of /proc/self/status (None off Linux).

    Benchmarks run the CLI in a child and print this from inside it: the ``ru_maxrss`` a parent
    reads for its children carries the parent's own peak over through fork + exec on Linux.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+)", status)
    return int(found.group(1)) if found else None
