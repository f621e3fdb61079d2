"""Every build of the root package generates the rr_proto stubs first (tools/gen_proto.py, as `make proto` does).

The stubs are git-ignored, so pyproject's package discovery runs before they exist; build_py adds the generated
packages before it settles its package list. Editable installs run build_py too.
"""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))  # setuptools.build_meta leaves the project off sys.path
from tools.gen_proto import generate  # noqa: E402


class BuildPyWithStubs(build_py):
    def finalize_options(self) -> None:
        generated = generate()
        self.distribution.packages = sorted({*(self.distribution.packages or ()), *generated})
        super().finalize_options()


setup(cmdclass={"build_py": BuildPyWithStubs})
