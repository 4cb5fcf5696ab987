"""`make bench` measures, never recalls: every ratio against a peer tool comes from the run that prints it.

The fast tests need no peer: no figure of another tool is stored in the benchmark code, and without the peer's
virtualenv `python -m pipeline.bench peers` prints one line saying the comparison was skipped, why, and the command
that installs the peer. The slow test runs the real comparison on a few questions when the peer is installed
(`make bench-peers`), and is skipped, saying so, when it is not.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.benchpeers import lmeval

SRC = Path(__file__).resolve().parents[1] / "src" / "pipeline"
# The modules that time the pipeline's speed (benchpage.py, which builds made-up answers, has probabilities in it).
BENCH_CODE = [SRC / "bench.py", *sorted((SRC / "benchpeers").glob("*.py"))]


def bench_peers(tmp_path: Path, venv: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, lmeval.VENV_VARIABLE: str(venv), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.bench", "peers", "--n", "4"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_no_peer_figure_is_stored_in_the_benchmark_code():
    """A stored rate of another tool would be a float literal (like the 4.59 questions/s this code once quoted)."""
    for path in BENCH_CODE:
        tree = ast.parse(path.read_text())
        floats = [(node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, float) and node.value != 0.0]
        assert not floats, f"{path.name} stores figures {floats}: measure them in the run instead"
    for path in [*BENCH_CODE, SRC / "benchpage.py"]:
        assert "anchors.md" not in path.read_text(), f"{path.name} quotes notes instead of measuring"


def test_bench_peers_says_it_skipped_lm_eval_when_the_peer_is_absent(tmp_path):
    absent = tmp_path / "no-such-venv"
    out = bench_peers(tmp_path, absent)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines == [f"stage vs lm-evaluation-harness: skipped, no lm-eval environment at {absent} "
                     f"({absent}/bin/python is missing); `make bench-peers` installs it into {absent} "
                     f"(or set {lmeval.VENV_VARIABLE} to a virtualenv with lm-eval[hf])"]
    assert not re.search(r"\d\.\dx", out.stdout), "a ratio was printed without a measurement"


def test_bench_peers_says_why_when_the_peer_cannot_import_lm_eval(tmp_path):
    """A folder whose python lacks lm_eval (this interpreter, linked outside its virtualenv) is not a peer."""
    broken = tmp_path / "broken-venv"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "python").symlink_to(sys.executable)
    out = bench_peers(tmp_path, broken)
    assert out.returncode == 0, out.stderr
    line, = [line for line in out.stdout.splitlines() if line.strip()]
    assert line.startswith(f"stage vs lm-evaluation-harness: skipped, {broken}/bin/python cannot import lm_eval")
    assert "No module named 'lm_eval'" in line and "`make bench-peers` installs it" in line


def test_make_bench_peers_runs_the_install_script():
    makefile = (SRC.parents[1] / "Makefile").read_text()
    assert re.search(r"^bench-peers:\n\t@PYTHON=\$\(PYTHON\) bash scripts/bench_peers\.sh$", makefile, flags=re.M)
    script = (SRC.parents[1] / "scripts" / "bench_peers.sh").read_text()
    pins = next(line for line in script.splitlines() if line.startswith("pins=("))
    assert '"$torch_pin" "lm-eval[hf]==' in pins, "torch must be pinned in the same pip command as lm-eval"
    assert re.search(r'^"\$\{pip\[@\]\}" install "\$\{pins\[@\]\}"', script, flags=re.M)


@pytest.mark.slow
@pytest.mark.integration
def test_bench_peers_measures_lm_eval_beside_the_stage(tmp_path, model_dir, capsys):
    """With the peer installed, both whole commands run on the same 8 questions and the printed ratios are the
    quotients of the printed figures."""
    from pipeline.bench import compose_config

    venv = lmeval.peer_venv(None)
    versions, reason = lmeval.peer_versions(venv)
    if versions is None:
        pytest.skip(f"the peer is not installed here ({reason}); `make bench-peers` installs it")
    result = lmeval.compare(compose_config([]), 8, [])
    printed = capsys.readouterr().out
    assert result is not None, printed
    line = next(line for line in printed.splitlines() if line.startswith("stage vs lm-evaluation-harness"))
    a, b = result["stage"], result["lm-eval"]
    assert f"{a['qps'] / b['qps']:.1f}x on the generation phase ({a['qps']:.2f} vs {b['qps']:.2f} questions/s)" in line
    assert f"{b['whole_s'] / a['whole_s']:.1f}x on the whole command ({a['whole_s']:.1f} vs {b['whole_s']:.1f} s)" \
        in line
    assert 0 < a["generate_s"] < a["whole_s"] and 0 < b["generate_s"] < b["whole_s"]
    assert result["same_answers"] >= 6, printed  # greedy on the same model: the answers agree but for rounding
