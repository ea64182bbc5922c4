"""`ray job submit --working-dir . -- paravideo generate -c configs/ray_local.yaml` against a head started
with `ray start --head`, all inside private network and process namespaces (nothing listens beyond
loopback, and `ray stop` sees only this test's Ray processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# unshare: a network namespace with only loopback, and a PID namespace whose end ends every process in it.
NAMESPACES = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]
JOB_SCRIPT = r"""
set -euo pipefail
ip link set lo up
export RAY_AUTH_MODE=disabled PATH="$VENV_BIN:$PATH"
ray start --head --temp-dir "$RAY_TMP" --num-cpus 2 --dashboard-host 127.0.0.1 --disable-usage-stats \
    > "$RAY_TMP/head.log" 2>&1 || { cat "$RAY_TMP/head.log"; exit 1; }
trap 'ray stop --force > /dev/null 2>&1 || true' EXIT
cd "$REPO"
ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
    paravideo generate -c configs/ray_local.yaml --set "output.dir=$OUT" --set output.overwrite=false
"""


def _namespaces_refused() -> str | None:
    """Why private namespaces cannot be made here, or None when they can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run([*NAMESPACES, "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare is not permitted here: {probe.stderr.strip()}"


def test_ray_job_submit_writes_video(tmp_path, _model_cache):
    reason = _namespaces_refused()
    if reason:
        pytest.skip(reason)
    out_dir = tmp_path / "job"
    ray_tmp = tempfile.mkdtemp(prefix="pv-head-")  # short: Ray's unix socket paths are length-limited
    env = dict(os.environ, VENV_BIN=str(Path(sys.executable).parent), RAY_TMP=ray_tmp, REPO=str(REPO),
               OUT=str(out_dir), PARAVIDEO_CACHE=str(_model_cache))
    env.pop("RAY_ADDRESS", None)
    try:
        job = subprocess.run([*NAMESPACES, "bash", "-c", JOB_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=280)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = job.stdout[-4000:] + job.stderr[-4000:]
    assert job.returncode == 0, log
    assert "succeeded" in log
    run = json.loads((out_dir / "run.json").read_text())
    assert run["complete"] is True, run.get("error")
    assert (out_dir / "video.mp4").stat().st_size > 0 and run["frames"] == 33
