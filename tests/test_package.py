from __future__ import annotations

import subprocess
import sys

import lifelong


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(lifelong.__all__) == lifelong.__all__, "keep __all__ sorted"
    for name in lifelong.__all__:
        assert getattr(lifelong, name) is not None
    public = {n for n in dir(lifelong) if not n.startswith("_") and n[0].isupper() or n in lifelong.__all__}
    public -= {"Any"}
    assert public <= set(lifelong.__all__) | set(lifelong._LAZY)


def test_importing_the_core_and_cli_does_not_import_torch() -> None:
    code = "import lifelong, lifelong.data.datasets, lifelong.space.config, lifelong.space.cost, service.cli.main, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
