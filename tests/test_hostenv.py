"""hcnet.hostenv: when a CPU process restarts with huge pages for malloc, and that it does."""

import os
import subprocess
import sys

import pytest

from hcnet import hostenv

CPU_LINUX = dict(platform="linux", glibc=(2, 36), accelerator=False)


def test_a_cpu_linux_process_gets_the_tunable_added_to_its_own():
    assert hostenv.cpu_malloc_env({"PATH": "/bin"}, **CPU_LINUX) == {
        "PATH": "/bin",
        "GLIBC_TUNABLES": hostenv.TUNABLE,
    }
    env = hostenv.cpu_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **CPU_LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert (
        hostenv.cpu_malloc_env({"JAX_PLATFORMS": "cpu"}, **{**CPU_LINUX, "accelerator": True})
        is not None
    )


@pytest.mark.parametrize(
    "environ, overrides",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # already chosen
        ({"HCNET_KEEP_MALLOC": "1"}, {}),  # opted out
        ({}, {"platform": "darwin"}),
        ({}, {"glibc": (2, 34)}),  # before the tunable existed
        ({}, {"accelerator": True}),  # a GPU or TPU is attached
        ({"JAX_PLATFORMS": "cuda,cpu"}, {}),
    ],
)
def test_nothing_changes_elsewhere(environ, overrides):
    assert hostenv.cpu_malloc_env(environ, **{**CPU_LINUX, **overrides}) is None


@pytest.mark.skipif(
    hostenv.cpu_malloc_env({"JAX_PLATFORMS": "cpu"}) is None,
    reason="not a glibc >= 2.35 Linux host",
)
def test_reexec_restarts_the_command_once_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    code = (
        "from hcnet import hostenv; hostenv.reexec_on_cpu(); import os; "
        "print(os.environ['GLIBC_TUNABLES'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert proc.stdout.strip() == hostenv.TUNABLE
    assert proc.stderr.count("hcnet: restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1") == 1


def test_an_accelerator_is_its_device_files_not_an_installed_plugin(monkeypatch):
    """libtpu or the CUDA plugin installed on a CPU machine leaves JAX on the CPU: the tunable still
    applies; a GPU's or TPU's device file is what says one is attached."""
    monkeypatch.setattr(hostenv.glob, "glob", lambda pattern: [])
    assert not hostenv.accelerator_attached()
    assert hostenv.cpu_malloc_env({}, platform="linux", glibc=(2, 36)) is not None
    monkeypatch.setattr(hostenv.glob, "glob", lambda p: ["/dev/nvidia0"] if "nvidia" in p else [])
    assert hostenv.accelerator_attached()
    assert hostenv.cpu_malloc_env({}, platform="linux", glibc=(2, 36)) is None
