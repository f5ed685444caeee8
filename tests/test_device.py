"""The CPU allocator setting: it removes the page faults of a forward pass and changes no value."""

import os
import platform
import subprocess
import sys

import pytest

from tests.helpers import REPO

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is a glibc function"
)

# Run in a fresh process: the default UNet, and the minor page faults and output checksum of its forward pass.
PROBE_SETUP = """
import resource, torch
from ddpm_core.utils.device import keep_freed_memory
from ddpm_core.diffusion.unet import UNet
torch.manual_seed(0)
model = UNet().eval().to(memory_format=torch.channels_last)
x, t = torch.randn(32, 1, 28, 28), torch.full((32,), 500)

def faults():
    with torch.no_grad():
        for _ in range(3):
            model(x, t)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            out = model(x, t)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10, out.double().sum().item()
"""


def run_probe(code: str, **env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE_SETUP + code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def probe(setting: str) -> tuple[bool, float, float]:
    on, faults, checksum = run_probe("print(keep_freed_memory(), *faults())", DDPM_KEEP_FREED_MEMORY=setting)
    return on == "True", float(faults), float(checksum)


@pytest.mark.slow
@glibc_only
def test_keeping_freed_memory_removes_the_page_faults_of_a_forward_pass():
    on, faults_on, checksum_on = probe("1")
    off, faults_off, checksum_off = probe("0")
    assert on and not off
    assert faults_off > 1000  # fresh pages for every large activation
    assert faults_on < faults_off / 10
    assert checksum_on == checksum_off  # where memory comes from never changes a value


@pytest.mark.slow
@glibc_only
def test_keep_freed_memory_can_be_switched_off_and_on_in_one_process():
    code = """
print(keep_freed_memory(False), faults()[0], keep_freed_memory(True), faults()[0])
print(keep_freed_memory(), keep_freed_memory(False), faults()[0])
"""
    off, faults_off, on, faults_on, undecided, off_again, faults_off_again = run_probe(code)
    assert (off, on, undecided, off_again) == ("False", "True", "True", "False")  # None keeps the decision
    assert float(faults_on) < float(faults_off) / 10
    assert float(faults_on) < float(faults_off_again) / 10
