"""The top-level ``kernels/`` folder never shadows an installed ``kernels`` package.

Hugging Face's kernel-hub client is a top-level package named ``kernels`` that transformers >= 5.2x
imports. fastmae's Triton sources live in a top-level folder of the same name, imported only as
``fastmae.kernels``: the folder has no ``__init__.py``, so wherever the repository root is on
``sys.path`` (a script, ``python -c`` or a REPL started there; pytest) an installed ``kernels`` wins.
These tests run Python in subprocesses, started in the repository root, as a user would.
"""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from hf_helpers import requires_transformers

ROOT = Path(__file__).resolve().parents[1]


def python_in_root(code: str, *, extra_path: Path | None = None, cwd: Path = ROOT, python: str = sys.executable):
    """Run ``python -c code`` in ``cwd``; ``extra_path`` goes on PYTHONPATH, i.e. after the cwd."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([python, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_kernels_folder_is_not_a_regular_package():
    assert (ROOT / "kernels").is_dir()
    assert not (ROOT / "kernels" / "__init__.py").exists(), "a regular package shadows Hugging Face's kernels"
    assert (ROOT / "fastmae" / "kernels").resolve() == (ROOT / "kernels").resolve()


@pytest.mark.slow
def test_an_installed_kernels_package_wins_from_the_repository_root(tmp_path):
    # A stand-in distribution named "kernels", on sys.path after the root (the cwd comes first).
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("STAND_IN = True\n")
    (site / "kernels-0.0.0.dist-info").mkdir()
    (site / "kernels-0.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.0.0\n")
    result = python_in_root("""
        import sys
        assert sys.path[0] == "", sys.path[:2]  # python -c: the cwd, the repository root, first
        import kernels
        print(kernels.__file__, kernels.STAND_IN)
        import fastmae.kernels.patchify as k
        print(k.__file__)
    """, extra_path=site)
    assert result.returncode == 0, result.stderr
    stand_in, fastmae_kernel = result.stdout.splitlines()
    assert stand_in == f"{site / 'kernels' / '__init__.py'} True"
    assert Path(fastmae_kernel).resolve() == ROOT / "kernels" / "patchify.py"


@pytest.mark.slow
@requires_transformers
def test_transformers_imports_from_the_repository_root():
    result = python_in_root("""
        import kernels
        from transformers import ViTMAEForPreTraining
        print(kernels.__file__)
    """)
    assert result.returncode == 0, result.stderr
    assert not Path(result.stdout.strip()).resolve().is_relative_to(ROOT)


@pytest.mark.slow
def test_editable_install_without_build_isolation(tmp_path):
    # The install the GPU machines use (torch already there): into a virtualenv that sees this
    # interpreter's packages (torch, setuptools), with no index and no build isolation.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    if python_in_root("import setuptools, pip", python=python).returncode:  # e.g. this interpreter is a venv's
        pytest.skip("setuptools or pip is not in the base interpreter's site-packages: no build without isolation")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", "-e", str(ROOT)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    site = Path(python_in_root("import site; print(site.getsitepackages()[0])", python=python).stdout.strip())
    assert list(site.glob("__editable__*fastmae*")), "the editable install did not land in the virtualenv"
    result = python_in_root("""
        import fastmae.kernels.patchify as k, fastmae.ops
        print(k.__file__)
    """, cwd=tmp_path, python=python)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == ROOT / "kernels" / "patchify.py"


@pytest.mark.slow
def test_wheel_holds_fastmae_kernels_and_no_top_level_kernels(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                            "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(ROOT)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "wheel").glob("fastmae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    kernel_files = sorted(p.name for p in (ROOT / "kernels").glob("*.py"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("fastmae/kernels/")) == kernel_files
    assert not [n for n in names if n.startswith("kernels/")]
    # installed non-editable, the package imports from anywhere with its kernels
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    result = python_in_root("""
        import fastmae, fastmae.kernels.patchify as k
        print(fastmae.__file__); print(k.__file__)
    """, cwd=tmp_path, extra_path=target)
    assert result.returncode == 0, result.stderr
    assert [Path(p).parent for p in result.stdout.split()] == [target / "fastmae", target / "fastmae" / "kernels"]
