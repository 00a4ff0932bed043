"""Build the Docker test image for the Python running this script, with no registry.

    PYTHON scripts/docker_image.py [--force] [--print-tag]

The image, ``asyncexec-test:py{major}.{minor}`` (``ASYNCEXEC_TEST_IMAGE_PREFIX``
overrides ``asyncexec-test``), is made from local files only (``docker import``
of a root filesystem): this interpreter's binary, its standard library and the
shared libraries ``ldd`` names, all at the same absolute paths as on the host
(pyenv builds have their prefix and rpath baked in), plus asyncexec from this
checkout and its runtime dependencies at the versions of ``locks/test.txt``,
installed with the base interpreter's pip into the interpreter's own
site-packages inside the image. cloudpickle is pinned to the version this
interpreter has, if it has one asyncexec can use (3 or later), so the worker in
the container matches a driver run by it.

The image carries a label with a hash of what went into it (interpreter,
asyncexec's sources, pyproject.toml, this script): when it matches, nothing is
done. Run by ``scripts/docker-up.sh``; see ``scripts/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABEL = "asyncexec.source"
PATH = "/usr/local/bin:/usr/bin:/bin"
# Readable by anyone, directories searchable (and /tmp keeps its 1777).
MODE = ("--mode=go+rX",)
# Top-level directories of the standard library left out of the image.
EXCLUDED = {
    "site-packages",
    "dist-packages",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
}
# Distributions whose version the worker reports and a driver must match.
PINNED = ("cloudpickle",)
# What `pip install` of the checkout needs besides asyncexec/.
PROJECT_FILES = ("pyproject.toml", "README.md")
# The versions of asyncexec's dependencies the image gets (those CI passed with).
LOCK = "locks/test.txt"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def version_short() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def image_tag() -> str:
    prefix = os.environ.get("ASYNCEXEC_TEST_IMAGE_PREFIX") or "asyncexec-test"
    return f"{prefix}:py{version_short()}"


def interpreter() -> str:
    """The real binary of this interpreter (a venv's python is a symlink to it)."""
    binary = os.path.realpath(sys.executable)
    base = os.path.realpath(sys.base_prefix)
    if os.path.commonpath([binary, base]) != base:
        # A venv made with --copies: use the base installation's binary.
        candidate = os.path.join(base, "bin", f"python{version_short()}")
        if os.path.isfile(candidate):
            return candidate
    return binary


def base_path(name: str) -> str:
    """A sysconfig path of the base interpreter: a venv's own paths (platstdlib!) are not."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    installed = {"installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
    return sysconfig.get_path(name, vars={**base, **installed})


def site_packages() -> str:
    """Where the base interpreter (not a venv) looks for third-party packages.

    Asked of the base interpreter itself: a venv's sysconfig answers with the venv
    scheme (``lib/pythonX.Y/site-packages`` under the base prefix), which Debian's
    Python does not search (its site reads ``/usr/local/lib/pythonX.Y/dist-packages``):
    an image built from a venv of ``/usr/bin/python3`` had no asyncexec it could import.
    """
    global _site_packages
    if _site_packages is None:
        asked = subprocess.run(
            [interpreter(), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        )
        _site_packages = asked.stdout.strip()
    return _site_packages


_site_packages: str | None = None


def pins() -> list[str]:
    """``name==version`` for each of PINNED this interpreter has installed, in a
    version asyncexec can use (3 or later: a system's old cloudpickle is not pinned)."""
    found = []
    for name in PINNED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = importlib.metadata.version(name)
            if int(version.split(".")[0]) >= 3:
                found.append(f"{name}=={version}")
    return found


def constraints(root: Path, pinned: Iterable[str]) -> str:
    """The lock's lines, less those of the pinned distributions."""
    names = {pin.split("==")[0] for pin in pinned}
    lines = (root / LOCK).read_text().splitlines()
    return "".join(f"{line}\n" for line in lines if line.split("==")[0] not in names)


def source_hash(root: Path, binary: str, pinned: Iterable[str]) -> str:
    """A hash of everything the image is made of, read from the checkout at ``root``."""
    digest = hashlib.sha256()
    for part in (sys.version, binary, site_packages(), *pinned):
        digest.update(part.encode() + b"\0")
    files = [*sorted(root.glob("asyncexec/**/*.py")), root / "pyproject.toml", root / LOCK]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)
    except subprocess.CalledProcessError as error:
        sys.exit(f"docker_image: docker {' '.join(args)} failed: {error.stderr.strip()}")


def inspect(tag: str, template: str) -> str | None:
    """A field of the image ``tag``, or None if there is no such image."""
    result = docker("image", "inspect", "--format", template, tag, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def inside(rootfs: Path, host_path: str) -> Path:
    return rootfs / host_path.lstrip("/")


def make_dir(path: Path) -> None:
    """mkdir -p with every directory made mode 0755 (images' /root included)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        directory.chmod(0o755)


def mirror(rootfs: Path, host_path: str) -> None:
    """Put the host file or directory at the same path in rootfs, dereferenced.

    Symbolic links on the way (``/lib -> usr/lib``, ``libffi.so.8 ->
    libffi.so.8.1.2``) are made again inside, so the path resolves in the
    container as it does on the host. Nothing is written through a link.
    """
    current = "/"
    parts = Path(host_path).parts[1:]
    for index, part in enumerate(parts):
        candidate = os.path.join(current, part)
        target = inside(rootfs, candidate)
        if os.path.islink(candidate):
            if not os.path.lexists(target):
                target.symlink_to(os.readlink(candidate))
            mirror(rootfs, os.path.normpath(os.path.join(current, os.readlink(candidate))))
            current = os.path.realpath(candidate)
        elif index < len(parts) - 1 or os.path.isdir(candidate):
            make_dir(target)
            current = candidate
        elif not os.path.lexists(target):
            shutil.copy2(candidate, target)


def shared_libraries(files: list[str]) -> set[str]:
    """Every library ``ldd`` names for the files (``ldd`` is recursive already)."""
    libraries: set[str] = set()
    for start in range(0, len(files), 200):
        output = subprocess.run(
            ["ldd", *files[start : start + 200]], capture_output=True, text=True, check=False
        ).stdout
        for line in output.splitlines():
            if not line.startswith(("\t", " ")):
                continue  # "file:" headers, "not a dynamic executable"
            words = line.split()
            if "=>" in words:
                words = words[words.index("=>") + 1 :]
                if words[:2] == ["not", "found"]:
                    print(f"docker_image: warning: ldd: {line.strip()}", file=sys.stderr)
                    continue
            if words and words[0].startswith("/"):
                libraries.add(words[0])
    return libraries


def extensions(directory: Path) -> list[str]:
    return sorted(str(path) for path in directory.rglob("*.so") if path.is_file())


def copy_stdlib(rootfs: Path) -> Path:
    """The standard library, without EXCLUDED, tkinter's extension, the bytecode for -O and
    -OO (a quarter of the image) and config-X.Y (the static libpython, for embedding).

    Returns lib-dynload's path on the host.
    """
    stdlib = os.path.realpath(base_path("stdlib"))

    def ignore(directory: str, names: list[str]) -> list[str]:
        ignored = [n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))]
        if directory == stdlib:
            ignored += [n for n in names if n in EXCLUDED or n.startswith("config-")]
        if os.path.basename(directory) == "lib-dynload":
            ignored += [n for n in names if n.startswith("_tkinter")]
        return ignored

    for path in sorted({stdlib, os.path.realpath(base_path("platstdlib"))}):
        mirror(rootfs, path)
        shutil.copytree(
            path,
            inside(rootfs, path),
            ignore=ignore,
            ignore_dangling_symlinks=True,
            dirs_exist_ok=True,
        )
    dynload = next((p for p in sys.path if os.path.basename(p) == "lib-dynload"), None)
    if dynload is None:
        sys.exit("docker_image: no lib-dynload directory on sys.path")
    dynload = os.path.realpath(dynload)
    if not os.path.isdir(inside(rootfs, dynload)):
        mirror(rootfs, dynload)
        shutil.copytree(dynload, inside(rootfs, dynload), ignore=ignore, dirs_exist_ok=True)
    return Path(dynload)


def skeleton(rootfs: Path, binary: str) -> None:
    """/tmp, /etc/passwd and group, python3 and pythonX.Y in /usr/bin."""
    for directory in ("etc", "tmp", "usr/bin", "usr/local/bin"):
        make_dir(rootfs / directory)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)
    for name in ("python3", f"python{version_short()}"):
        link = rootfs / "usr/bin" / name
        if f"/usr/bin/{name}" != binary and not os.path.lexists(link):
            link.symlink_to(binary)


def snapshot(destination: Path) -> None:
    """Copy what ``pip install`` needs from the checkout (so it builds nothing in the checkout)."""
    shutil.copytree(
        REPO / "asyncexec",
        destination / "asyncexec",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for name in (*PROJECT_FILES, LOCK):
        (destination / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, destination / name)


def pip_install(source: Path, target: Path, binary: str, pinned: list[str]) -> None:
    """Install the snapshot at ``source`` into ``target`` with ``binary``'s pip (a
    venv's python may have none, as uv's venvs), at the lock's versions."""
    locked = source / "constraints.txt"
    locked.write_text(constraints(source, pinned))
    environment = dict(
        os.environ,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_ROOT_USER_ACTION="ignore",
        PIP_NO_INPUT="1",
        # (Not --constraint: as an environment variable it binds the isolated build
        # of the snapshot too, so setuptools is the lock's.)
        PIP_CONSTRAINT=str(locked),
    )
    command = [binary, "-m", "pip", "install", "--quiet", "--target", str(target)]
    subprocess.run([*command, str(source), *pinned], check=True, env=environment)
    # Console scripts whose #! names the host's python: of no use in the image.
    shutil.rmtree(target / "bin", ignore_errors=True)


def import_image(rootfs: Path, tag: str, digest: str) -> None:
    """Stream the rootfs into ``docker import``: every file root's, readable by anyone."""
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "-c", "--numeric-owner", "--owner=0", "--group=0", *MODE, "."],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    changes = [
        f"ENV PATH={PATH}",
        f"LABEL {LABEL}={digest} asyncexec.python={sys.version.split()[0]}",
    ]
    imported = subprocess.run(
        ["docker", "import", *(f"--change={c}" for c in changes), "-", tag],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        sys.exit(f"docker_image: tar | docker import failed: {imported.stderr.strip()}")


def build(tag: str, binary: str, pinned: list[str]) -> None:
    previous = inspect(tag, "{{.Id}}")
    work = Path(tempfile.mkdtemp(prefix="asyncexec-image-"))
    try:
        source, rootfs = work / "src", work / "rootfs"
        source.mkdir()
        rootfs.mkdir(mode=0o755)
        snapshot(source)
        digest = source_hash(source, binary, pinned)
        dynload = copy_stdlib(rootfs)
        mirror(rootfs, binary)
        skeleton(rootfs, binary)
        target = inside(rootfs, site_packages())
        make_dir(target)
        pip_install(source, target, binary, pinned)
        files = [binary, *(f for f in extensions(dynload) if "_tkinter" not in f)]
        for library in sorted(shared_libraries(files + extensions(target))):
            mirror(rootfs, library)
        import_image(rootfs, tag, digest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    current = inspect(tag, "{{.Id}}")
    if previous and previous != current:
        removed = docker("image", "rm", previous, check=False)
        if removed.returncode != 0:
            print(f"docker_image: kept the previous {tag}: {removed.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Build the Docker test image for this Python.")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--print-tag", action="store_true", help="print the image's tag, exit")
    options = parser.parse_args()
    tag = image_tag()
    if options.print_tag:
        print(tag)
        return 0
    started = time.monotonic()
    binary = interpreter()
    pinned = pins()
    if not options.force and inspect(tag, f'{{{{index .Config.Labels "{LABEL}"}}}}') == (
        source_hash(REPO, binary, pinned)
    ):
        print(f"{tag} up to date ({time.monotonic() - started:.2f} s)")
        return 0
    print(f"building {tag} from {binary} ({', '.join(pinned) or 'no pins'})", flush=True)
    build(tag, binary, pinned)
    size = int(inspect(tag, "{{.Size}}") or 0)
    print(f"built {tag}: {size / 1e6:.0f} MB in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
