"""The README's curl flow, run as written against the real stack (only the API address differs)."""

import re
import subprocess

from tests.service.conftest import ROOT, authed


def test_readme_curl_flow_works_as_written(stack, client, tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- curl-flow -->\n```bash\n(.*?)```", readme, re.S).group(1)
    assert "API=http://127.0.0.1:8000\n" in block
    script = "set -euo pipefail\n" + block.replace("API=http://127.0.0.1:8000", f"API={stack.url}", 1)
    script += 'echo\necho "JOB=$JOB"\necho "KEY=$KEY"\n'  # the last curl prints no newline
    # A scratch folder that looks like the checkout (its .venv, its modules) keeps the files it writes apart.
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    # The stack's environment, so that the key command writes to the database the API reads, as on a host.
    env = {**stack.env, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    job_id = re.search(r"^JOB=(\S+)$", run.stdout, re.M).group(1)
    key = re.search(r"^KEY=(\S+)$", run.stdout, re.M).group(1)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404, "the job is the tenant readme's, invisible to others"
    with authed(stack.url, key) as readme:
        job = readme.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["weights"].startswith("job:")
    assert (tmp_path / "model.safetensors").stat().st_size > 1_000_000
