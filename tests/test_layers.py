"""The shape holds: import-linter's contracts (.importlinter) on the tree, and proof that they catch a break."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "transforms", "embed_client", "embed_emulator")


def _lint(folder):
    # The packages are imported from `folder` (first on the path), so a copy is checked, not the installed tree.
    env = dict(os.environ, PYTHONPATH=folder)
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--no-cache"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def _copy(tmp_path):
    for name in PACKAGES:
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    return tmp_path


def test_every_contract_is_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "5 kept, 0 broken" in out.stdout


def _append(path, line):
    with open(path, "a") as f:
        f.write("\n" + line + "\n")


def test_an_upward_import_breaks_the_layers(tmp_path):
    folder = _copy(tmp_path)
    _append(folder / "embed_client" / "errors.py", "import transforms.records  # noqa")
    out = _lint(str(folder))
    assert out.returncode == 1
    assert "pipeline above transforms above embed_client BROKEN" in out.stdout
    assert "embed_client.errors -> transforms.records" in out.stdout


def test_a_circle_between_siblings_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _append(folder / "transforms" / "records.py", "def _late():\n    import transforms.models  # noqa")
    _append(folder / "transforms" / "models.py", "import transforms.records  # noqa")
    out = _lint(str(folder))
    assert out.returncode == 1 and "no import circles between sibling modules or packages BROKEN" in out.stdout


def test_the_emulator_imports_nothing_of_the_job(tmp_path):
    folder = _copy(tmp_path)
    _append(folder / "embed_emulator" / "stats.py", "def _peek():\n    from pipeline import settings  # noqa")
    out = _lint(str(folder))
    assert out.returncode == 1 and "imports nothing of the client or" in out.stdout
