"""Build hook: the config schema and the embedded default config travel in the wheel as package data
(dfnas/defaults/), so that an installed dfnas validates and fills configs without its source tree.
Everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# package data file -> its one copy in the repository (what the Snakefile reads)
DEFAULTS = {"config.schema.yaml": "workflow/schemas/config.schema.yaml", "config.yaml": "config.yaml"}


class BuildWithDefaults(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "dfnas" / "defaults"
        self.mkpath(str(target))
        for name, source in DEFAULTS.items():
            self.copy_file(source, str(target / name))


setup(cmdclass={"build_py": BuildWithDefaults})
