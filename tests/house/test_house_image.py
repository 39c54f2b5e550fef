"""The operator image carries only what the operator, the drift monitor and the alert receiver import: they
start with the extras (the KFP SDK, scikit-learn, matplotlib, pyarrow), the demo and the pipeline blocked, as
in an image built from the core dependencies alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("kfp", "sklearn", "matplotlib", "pyarrow", "torch", "kserve", "kmock", "moto", "devstack", "kfp_pipelines",
           "tests", "bench")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (not in the operator image)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")


def run(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_operator_monitor_and_receiver_start_without_the_extras():
    proc = run("""
        import kanari.controller.__main__, kanari.controller.handlers, kanari.monitor.server, kanari.retrain.receiver
        from kanari.retrain.kfp_client import KfpClient
        from kanari.retrain.launchers import KfpLauncher
        KfpClient("http://127.0.0.1:9")  # the receiver's KFP launcher needs only kfp-server-api
        from kanari.cli.main import main
        for argv in (["drift", "monitor", "--help"], ["drift", "receiver", "--help"], ["--help"]):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code == 0, argv
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in ("kfp", "sklearn", "matplotlib", "pyarrow")))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok []")


def test_the_blocker_blocks(tmp_path):
    """The check above would prove nothing if the blocker let the extras through."""
    proc = run("import sklearn")
    assert proc.returncode == 1 and "not in the operator image" in proc.stderr


def test_cli_features_on_extras_say_which_extra(tmp_path):
    data = tmp_path / "d.parquet"
    data.write_bytes(b"PAR1")
    proc = run("from kanari.cli.main import main; raise SystemExit(main(sys.argv[1:]))",
               "drift", "baseline", "--data", str(data), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "pip install 'kanari[cli]'" in proc.stderr and "Traceback" not in proc.stderr


def test_core_dependencies_exclude_the_extras_and_the_image_installs_only_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert not core & {"kfp", "scikit-learn", "matplotlib", "pyarrow", "torch", "kserve", "kmock", "moto"}
    stage = (ROOT / "Dockerfile").read_text().split(" AS build\n", 1)[1].split("\nFROM ", 1)[0]
    copied = [line.split()[1] for line in stage.splitlines() if line.startswith("COPY ")]
    assert copied == ["pyproject.toml", "operators"], copied
    installs = [line for line in stage.splitlines() if "pip install" in line]
    assert installs and all("pip install . " in line and "[" not in line for line in installs), installs


def test_commands_on_extras_name_the_extra_in_one_line(tmp_path):
    for argv, extra in ((["pipeline", "compile", "--out", str(tmp_path / "p.yaml")], "pipelines"),
                        (["models", "list", "--group", "g"], "pipelines")):
        proc = run("from kanari.cli.main import main; raise SystemExit(main(sys.argv[1:]))", *argv)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"kanari: error: this command needs the {extra!r} extra: pip install 'kanari[{extra}]'"
