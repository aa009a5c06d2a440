"""Every Python example in the README runs, on a kernel that has what it uses."""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _examples():
    with open(README) as f:
        text = f.read()
    return re.findall(r"^### (.+?)\n.*?```python\n(.*?)```", text, re.M | re.S)


@pytest.mark.requires_sw_sync
@pytest.mark.requires_udmabuf
@pytest.mark.parametrize("title, code", _examples(), ids=[t for t, _ in _examples()])
def test_readme_example_runs(title, code, tmp_path):
    done = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-c", code], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, f"README example {title!r} failed:\n{done.stderr}"
