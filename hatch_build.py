"""Build hook: compiles apiwatch's optional C accelerators (``monitor/**/_*.c``).

Each accelerator is a small CPython extension that does one hot loop of a collector in C
(see ``monitor/accel.py``); the pure-Python code it speeds up stays the reference and the
fallback. Without a C compiler the build still succeeds: it says so and the wheel is pure.
For an editable install the modules are built next to their sources.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _sources(root: Path) -> list[Path]:
    return sorted((root / "monitor").rglob("_*.c"))


class AcceleratorBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or os.environ.get("APIWATCH_BUILD_PURE"):
            return
        root = Path(self.root)
        sources = _sources(root)
        if not sources:
            return
        try:
            built = _compile(root, sources)
        except Exception as exc:  # no compiler, no headers: a pure wheel still works
            print(f"apiwatch: C accelerators not built ({exc}); using pure Python", file=sys.stderr)
            return
        if version == "editable":
            return  # the modules sit beside their sources, on the editable path
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        for lib in built:
            build_data["force_include"][str(lib)] = str(lib.relative_to(root))


def _compile(root: Path, sources: list[Path]) -> list[Path]:
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    modules = [
        Extension(
            ".".join(src.relative_to(root).with_suffix("").parts),
            [str(src.relative_to(root))],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
        for src in sources
    ]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dist = Distribution({"name": "apiwatch-accelerators", "ext_modules": modules})
        cmd = build_ext(dist)
        cmd.inplace = True
        cmd.build_temp = str(root / "build" / "accel")
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return [src.with_name(src.stem + suffix) for src in sources]
