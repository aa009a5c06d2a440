"""Fuzzing against the real kernel: every public callable, good and bad arguments, in a
child process (tests/fuzz_driver.py), so that a crash of the interpreter fails the
test instead of killing pytest.

CI runs a dozen hypothesis examples per callable (seeded: LINUXDMABUF_SEED draws others); LINUXDMABUF_LONG=1 runs
1,000. The child writes no hypothesis database.
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from fuzz_driver import NEEDS_SW_SYNC
from reliability import scaled

from linuxdmabuf.pytest_plugin import need, present_or_expected

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_driver.py")
EXAMPLES = scaled(12, 1000)
with open(DRIVER) as _f:
    TARGETS = re.findall(r"^def fuzz_(\w+)\(", _f.read(), re.M)
# The sw_sync targets only where the kernel has sw_sync or is expected to (tests/fuzz_driver.py NEEDS_SW_SYNC).
if not present_or_expected("sw_sync"):
    TARGETS = [t for t in TARGETS if t not in NEEDS_SW_SYNC]


def run_driver(tmp_path, *args, timeout=3600):
    """Run the driver; (its report or None, a description of how it ended)."""
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, DRIVER, "--out", str(out), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode < 0:
        how = f"the fuzzer died of {signal.Signals(-done.returncode).name}"
    else:
        how = f"the fuzzer exited with status {done.returncode}"
    how += f"; its stderr ends with:\n{done.stderr[-3000:]}"
    if done.returncode != 0:
        return None, how
    with open(out) as f:
        return json.load(f), how


def test_the_harness_notices_a_crash(tmp_path):
    report, how = run_driver(tmp_path, "--crash")
    assert report is None and "SIGSEGV" in how and "Fatal Python error" in how


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    found, how = run_driver(tmp_path_factory.mktemp("fuzz"), "--examples", str(EXAMPLES))
    assert found is not None, how
    return found


@pytest.mark.slow
@pytest.mark.requires_dma_heap("system")
@pytest.mark.requires_udmabuf
@pytest.mark.parametrize("target", TARGETS)
def test_fuzzed_callable_raises_only_documented_errors(report, target):
    result = report[target]
    if "skipped" in result:
        need("sw_sync")  # the only reason the driver skips a target: a failure where sw_sync is expected
    assert result["failure"] is None, f"{target}:\n{result['failure']}"
    assert result["examples"] >= EXAMPLES // 2, result  # hypothesis ran (nearly) all it was asked for
    print(f"{target}: {result['examples']} examples, outcomes {result['outcomes']}")
