# Everything about the package is in pyproject.toml; this file only hooks the
# generation of linuxdmabuf/_ffi.py (cdefs/build.py, no C compiler) into build_py,
# for wheels and for editable installs alike.
import os
import runpy

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_ffi(build_py):
    def run(self):
        super().run()
        outdir = "linuxdmabuf" if self.editable_mode else os.path.join(self.build_lib, "linuxdmabuf")
        runpy.run_path(os.path.join("cdefs", "build.py"))["generate"](outdir)


setup(cmdclass={"build_py": build_py_with_ffi})
