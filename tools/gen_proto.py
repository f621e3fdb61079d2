"""Generate the Python stubs of protos/ into rr_proto/ (the one scripted step; `make proto`, and every pip build of
the root package through setup.py).

grpc_tools.protoc writes imports relative to the proto root ("from inference import ..."); one rewrite makes them
absolute inside the rr_proto package. Generated files are git-ignored and never edited by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "rr_proto"
PACKAGES = ("inference", "roadrunner")


def generate() -> list[str]:
    """Write the stubs into rr_proto/ and return the generated packages ("rr_proto.inference", ...)."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
    ]
    if protoc.main(args + sources) != 0:
        raise RuntimeError(f"protoc failed on {PROTOS}")
    pattern = re.compile(rf"^from ({'|'.join(PACKAGES)})(\.[\w.]+)? import", re.MULTILINE)
    for path in OUT.rglob("*_pb2*.py*"):
        if path.suffix not in (".py", ".pyi"):  # not the interpreter's __pycache__/*.pyc
            continue
        text = path.read_text()
        path.write_text(pattern.sub(lambda m: f"from rr_proto.{m.group(1)}{m.group(2) or ''} import", text))
    folders = [OUT / package for package in PACKAGES]
    folders += [p for folder in folders for p in folder.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    for folder in folders:
        (folder / "__init__.py").touch()
    return sorted(".".join(folder.relative_to(ROOT).parts) for folder in folders)


def main() -> int:
    try:
        generate()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
