"""Ships ``tracevault-autoenable.pth`` at the root of site-packages.

Everything else is declared in ``pyproject.toml``; this file only extends the build so
the ``.pth`` (which arms ``TRACEVAULT_ENABLED`` auto-enable at interpreter start) lands
beside the packages in regular and in editable installs.
"""

from __future__ import annotations

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = os.path.join("src", "tracevault-autoenable.pth")


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, os.path.basename(PTH))
        self.copy_file(PTH, target, preserve_mode=False)


class EditableWheelWithPth(editable_wheel):
    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(PTH, installation_dir)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
