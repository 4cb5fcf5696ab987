"""containers/: the Apptainer definition and the wrapper that runs the jobs' Python inside its image. Apptainer is
not installable here (Debian's archive has neither apptainer nor singularity-container), so the definition is checked as its parser reads
it: the header, known sections, files that exist, shell that parses (bash -n), the project's own torch pin; and
the wrapper is run against a stand-in `apptainer` that records its arguments (the one seam faked)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEF = REPO / "containers" / "pipeline.def"
SECTIONS = {"%setup", "%files", "%environment", "%post", "%runscript", "%startscript", "%test", "%labels", "%help"}


def sections(text: str) -> tuple[dict[str, str], list[str]]:
    """(section -> its body, the header lines) of a definition file."""
    header, found, current = [], {}, None
    for line in text.splitlines():
        if re.match(r"^%\w+", line):
            current = line.split()[0]
            assert current not in found, f"section {current} twice"
            found[current] = ""
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                header.append(line.strip())
        else:
            found[current] += line + "\n"
    return found, header


def test_the_definition_is_well_formed_and_installs_the_projects_torch():
    found, header = sections(DEF.read_text())
    assert header[0] == "Bootstrap: docker" and re.fullmatch(r"From: \S+:\S+", header[1]), header
    assert set(found) <= SECTIONS and {"%files", "%post", "%environment", "%runscript", "%test"} <= set(found)
    for line in found["%files"].splitlines():
        if line.strip() and not line.strip().startswith("#"):
            source, dest = line.split()
            assert (REPO / source).exists() and dest.startswith("/opt/pipeline/"), line
    for name in ("%post", "%environment", "%runscript", "%test"):
        out = subprocess.run(["bash", "-n"], input=found[name], capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr)
    pinned = re.search(r"TORCH_VERSION:-([\d.]+)", (REPO / "scripts/setup.sh").read_text()).group(1)
    assert f'"torch=={pinned}"' in found["%post"]  # the CUDA build of the version make setup installs
    assert "-c /opt/pipeline/constraints.txt -e /opt/pipeline" in found["%post"]  # editable: conf/ is found
    assert "HF_HUB_OFFLINE=1" in found["%environment"] and 'python -m pipeline "$@"' in found["%runscript"]


def test_the_wrapper_runs_python_inside_the_image(tmp_path):
    fake = tmp_path / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args")}
    subprocess.run([str(REPO / "containers/apptainer-python"), "-m", "pipeline", "stage=report"], cwd=tmp_path,
                   env=env, check=True)
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "exec", "--nv", str(tmp_path / "pipeline.sif"), "python", "-m", "pipeline", "stage=report"]
    env["PIPELINE_IMAGE"] = "/images/judge.sif"
    subprocess.run([str(REPO / "containers/apptainer-python"), "-V"], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "args").read_text().split("\n")[2] == "/images/judge.sif"
