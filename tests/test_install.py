"""``make install``: pip's configuration passed on to uv as flags
(``scripts/uv_flags_from_pip.py``), so uv installs from what pip would."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "uv_flags_from_pip.py"


def _module():
    spec = importlib.util.spec_from_file_location("uv_flags_from_pip", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_index_wheel_folder_and_constraint_becomes_a_flag():
    listed = (
        "global.cert='/etc/ssl/certs/ca.crt'\n"
        "global.constraint='/etc/xdg/pip/constraints.txt'\n"
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'\n"
        "global.find-links='/opt/files'\n"
        ":env:.find-links='/opt/wheels'\n"  # a PIP_* variable wins over the files
        ":env:.default-timeout='180'\n"
        "global.index-url='https://mirror.example/simple'\n"
        "install.index-url='https://install.example/simple'\n"  # [install] over [global]
        "wheel.index-url='https://not-for-install.example/simple'\n"  # another command's
    )
    assert _module().uv_flags(listed) == [
        "--constraint=/etc/xdg/pip/constraints.txt",
        "--extra-index-url=file:///opt/a/simple",
        "--extra-index-url=file:///opt/b/simple",
        "--find-links=/opt/wheels",
        "--index-url=https://install.example/simple",
    ]
    assert _module().uv_flags("") == []


def test_values_on_several_lines_and_no_index():
    """pip.conf lists several indexes one per line; pip config list prints the value's
    repr (newlines escaped), and no-index keeps uv off every index, as pip."""
    listed = (
        "global.extra-index-url='\\nhttps://a.example/simple\\nhttps://b.example/simple'\n"
        'global.find-links="/opt/it\'s here"\n'
        "global.no-index='true'\n"
    )
    assert _module().uv_flags(listed) == [
        "--no-index",
        "--extra-index-url=https://a.example/simple",
        "--extra-index-url=https://b.example/simple",
        "--find-links=/opt/it's",
        "--find-links=here",
    ]


def test_the_script_reads_this_environments_pip():
    pip = Path(sys.executable).parent / "pip"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), str(pip)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert all(line.startswith("--") and "=" in line for line in p.stdout.split())
