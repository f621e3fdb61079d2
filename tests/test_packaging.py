"""Every pip build of the root package generates the rr_proto stubs (SPEC 2: they are git-ignored, so every install
path regenerates them): a wheel built from the checkout's own files, stubs left out, carries them and imports them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"


def expected_stubs() -> set[str]:
    """The wheel paths tools/gen_proto.py writes: three files per .proto, an __init__.py per folder."""
    stubs = set()
    for proto in PROTOS.rglob("*.proto"):
        stem = Path("rr_proto", proto.relative_to(PROTOS).with_suffix(""))
        stubs |= {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"}
        packages = [folder for folder in stem.parents if len(folder.parts) > 1]  # below rr_proto/
        stubs |= {f"{folder}/__init__.py" for folder in packages}
    return stubs


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone of the working tree would have (tracked or untracked, never git-ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # not a tracked file deleted in the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_wheel_generates_and_ships_the_stubs(tmp_path):
    source = checkout_copy(tmp_path / "src")
    assert not (source / "rr_proto" / "inference").exists()
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "--disable-pip-version-check", "-w", tmp_path / "dist", source], check=True)
    (wheel,) = (tmp_path / "dist").glob("roadrunner-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        assert expected_stubs() <= set(archive.namelist())
        archive.extractall(tmp_path / "site")
    probe = "import rr_proto.inference.grpc_service_pb2_grpc as a, rr_proto.roadrunner.v1.roadrunner_pb2_grpc as b;"
    probe += "print(a.__file__); print(b.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(Path(line).is_relative_to(tmp_path / "site") for line in done.stdout.split()), done.stdout
