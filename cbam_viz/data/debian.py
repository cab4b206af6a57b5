"""Obtaining the Debian packages the stamp scenes are made of: `apt-get download`, then `dpkg-deb -x`, cached."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_dir

DEBIAN_PACKAGES = (
    "tuxpaint-stamps-default",
    "mate-backgrounds",
    "gnome-backgrounds",
    "plasma-workspace-wallpapers",
    "tuxpaint-data",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
)

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cbam_viz"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _find_deb(debs: Path, package: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def deb_version(deb: Path) -> str:
    """The Version field of a .deb (via dpkg-deb), or the one encoded in its file name."""
    if shutil.which("dpkg-deb"):
        res = _run(["dpkg-deb", "-f", str(deb), "Version"])
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    parts = deb.name.split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else "unknown"


def fetch_debian_assets(
    cache: Path, packages: Iterable[str] = DEBIAN_PACKAGES, log: Callable[[str], None] = print
) -> dict[str, dict[str, str]]:
    """Download (`apt-get download`) and extract (`dpkg-deb -x`) each package into `cache`, skipping cached work.

    Returns {package: {"root": extracted dir, "version": Debian version}}. A package whose
    `cache/extracted/<package>/.complete` marker exists is not downloaded or extracted again.
    """
    cache = Path(cache).expanduser()
    debs = cache / "debs"
    out: dict[str, dict[str, str]] = {}
    for package in packages:
        root = cache / "extracted" / package
        marker = root / ".complete"
        if not marker.exists():
            _extract(_download(debs, package, log), root, log)
        out[package] = {"root": str(root), "version": marker.read_text().strip() or "unknown"}
    return out


def _download(debs: Path, package: str, log: Callable[[str], None]) -> Path:
    """The cached .deb of `package` in `debs`, downloaded with `apt-get download` when there is none."""
    debs.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(debs, package)
    if deb is not None:
        return deb
    if not shutil.which("apt-get"):
        raise CbamVizError(
            f"apt-get not found: `data build` downloads the Debian package {package!r} with apt-get. "
            f"Run it on Debian/Ubuntu, or copy {package}_*.deb into {debs} (or pass --pack with an "
            "existing asset pack)."
        )
    log(f"downloading {package} (apt-get download) into {debs}")
    res = _run(["apt-get", "download", package], cwd=debs)
    deb = _find_deb(debs, package)
    if res.returncode != 0 or deb is None:
        detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise CbamVizError(
            f"`apt-get download {package}` failed: {' / '.join(detail) or 'no .deb was written'}. "
            "Run `apt-get update` (as root) and check that the Debian mirror is reachable, or copy "
            f"{package}_*.deb into {debs}."
        )
    return deb


def _extract(deb: Path, root: Path, log: Callable[[str], None]) -> None:
    """Unpack `deb` into `root` (replacing it) with a `.complete` marker holding its Debian version."""
    if not shutil.which("dpkg-deb"):
        raise CbamVizError(
            f"dpkg-deb not found: it is needed to unpack {deb.name}. Install it with `apt-get install dpkg` "
            "(it ships with every Debian/Ubuntu system)."
        )
    log(f"extracting {deb.name}")
    with atomic_dir(root) as tmp:
        res = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if res.returncode != 0:
            raise CbamVizError(
                f"`dpkg-deb -x {deb}` failed: {res.stderr.strip()[-300:]}. Delete the file and run the build "
                "again to download it anew."
            )
        (tmp / ".complete").write_text(deb_version(deb) + "\n")
