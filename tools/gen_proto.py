"""Generate the Python stubs of protos/ into rr_proto/ (the one scripted step; `make proto`).

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


def main() -> int:
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
        print("protoc failed", file=sys.stderr)
        return 1
    pattern = re.compile(rf"^from ({'|'.join(PACKAGES)})(\.[\w.]+)? import", re.MULTILINE)
    for path in OUT.rglob("*_pb2*.py*"):
        if path.suffix not in (".py", ".pyi"):  # not the interpreter's __pycache__/*.pyc
            continue
        text = path.read_text()
        path.write_text(pattern.sub(lambda m: f"from rr_proto.{m.group(1)}{m.group(2) or ''} import", text))
    for package in PACKAGES:
        for folder in [OUT / package, *(p for p in (OUT / package).rglob("*") if p.is_dir())]:
            (folder / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
