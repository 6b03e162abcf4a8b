"""`make demo`: real transfer learning through the API on the embedded default (no servers needed).

1. trains resnet18 from scratch on scikit-learn's handwritten digits 0-4 (`"weights": null`);
2. fine-tunes that model with gradual unfreezing on 30 labelled images per digit of 5-9
   (`"weights": "job:<id>"`), showing stages, unfrozen groups and validation metrics live;
then prints the final table and exits 0 (1 if a job did not succeed).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from scripts.digits import write_samples

VAR = Path(os.environ.get("UNFREEZE_DEMO_VAR", "var/demo")).resolve()
FAST = {"image_size": 32, "batch_size": 32}


def stack_env(port: int) -> dict[str, str]:
    """The demo's private embedded stack: SQLite and a filesystem broker under VAR."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(UNFREEZE_VAR=str(VAR), PORT=str(port), PYTHONUNBUFFERED="1")
    return env


def start_stack(env: dict[str, str]) -> subprocess.Popen:
    log = (VAR / "stack.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "scripts.serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def new_key(env: dict[str, str]) -> str:
    """An API key of the tenant "demo", made as the README makes one (the key is the last line printed)."""
    run = subprocess.run([sys.executable, "-m", "api.keys", "create", "--tenant", "demo"], env=env,
                         capture_output=True, text=True, check=True)
    return run.stdout.strip().splitlines()[-1]


def wait_healthy(client: httpx.Client, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"the stack exited; see {VAR / 'stack.log'}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"the API did not start; see {VAR / 'stack.log'}")


def upload(client: httpx.Client, path: Path, name: str) -> dict:
    with path.open("rb") as f:
        response = client.post("/v1/datasets", files={"file": (path.name, f)}, data={"name": name})
    response.raise_for_status()
    ds = response.json()
    print(f"  dataset {ds['id']}: {ds['name']}: {ds['num_samples']} images, classes {ds['classes']}, "
          f"own val split: {ds['has_val_split']}")
    return ds


def follow(client: httpx.Client, job: dict, title: str) -> dict:
    """Poll a job until it ends, printing its events and one line per finished epoch."""
    print(f"\n== {title}: job {job['id']} ({job['strategy']['type']}, weights={job['weights']}) ==")
    seen_events = seen_metrics = None
    while True:
        job = client.get(f"/v1/jobs/{job['id']}").json()  # before the rows, so none are missed at the end
        metrics = client.get(f"/v1/jobs/{job['id']}/metrics", params={"after": seen_metrics} if seen_metrics else {})
        events = client.get(f"/v1/jobs/{job['id']}/events", params={"after": seen_events} if seen_events else {})
        lines: list[tuple[str, str]] = []
        for m in metrics.json()["data"]:
            lines.append((m["created_at"], f"    stage {m['stage']} epoch {m['epoch']:>2}  "
                          f"unfrozen {'+'.join(m['unfrozen_groups']):<38} train_loss {m['train_loss']:.3f}  "
                          f"val_loss {m['val_loss']:.3f}  val_acc {m['val_accuracy']:.3f}  ({m['duration_s']:.1f}s)"))
            seen_metrics = m["id"]
        for e in events.json()["data"]:
            if e["type"] != "queued":
                lines.append((e["created_at"], f"  [{e['type']}] {e['message']}"))
            seen_events = e["id"]
        for _, line in lines:  # an epoch's row before the events it caused
            print(line)
        if job["status"] in ("succeeded", "failed", "cancelled") and not events.json()["has_more"]:
            return job
        time.sleep(0.5)


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(VAR, ignore_errors=True)
    VAR.mkdir(parents=True)
    print("building datasets from scikit-learn's handwritten digits (no download)")
    source, target = write_samples(VAR)

    port = int(os.environ.get("PORT", "8000"))
    if not port_is_free(port):  # e.g. `make run` in another terminal: the demo runs its own stack
        port = free_port()
        print(f"port {os.environ.get('PORT', '8000')} is taken; the demo's own stack uses {port}")
    env = stack_env(port)
    stack = start_stack(env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_healthy(client, stack)
            client.headers["Authorization"] = f"Bearer {new_key(env)}"
            print(f"stack up on http://127.0.0.1:{port} (embedded SQLite + filesystem broker in {VAR}), "
                  "with an API key of the tenant 'demo'")
            src = upload(client, source, "digits 0-4")
            tgt = upload(client, target, "digits 5-9, 30 per class")

            def submit(**body) -> dict:
                response = client.post("/v1/jobs", json=body)
                response.raise_for_status()
                return response.json()

            base = follow(client, submit(dataset_id=src["id"], base_model="resnet18", weights=None,
                                         strategy={"type": "full", "epochs_per_stage": 6, "lr_decay": 1.0},
                                         hyperparameters={**FAST, "batch_size": 64}),
                          "1/2 base model from scratch on digits 0-4")
            if base["status"] != "succeeded":
                print(f"base model failed: {base['error']}")
                return 1
            tuned = follow(client, submit(dataset_id=tgt["id"], base_model="resnet18", weights=f"job:{base['id']}",
                                          strategy={"type": "gradual"},  # the defaults: 3 epochs, 2 groups per stage
                                          hyperparameters={**FAST, "max_epochs": 12}),
                           "2/2 gradual unfreezing of that model on digits 5-9 (30 images per class)")
            print_table([("base, digits 0-4 (from scratch)", base), ("fine-tuned, digits 5-9 (gradual)", tuned)])
            ok = all(j["status"] == "succeeded" for j in (base, tuned))
            print(f"\nmodel file: curl -H 'Authorization: Bearer <key>' -o model.safetensors "
                  f"http://127.0.0.1:{port}/v1/jobs/{tuned['id']}/model")
            print(f"demo finished in {time.monotonic() - started:.0f}s")
            return 0 if ok else 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(timeout=30)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"\n{'job':<36} {'status':<10} {'epochs':>6} {'stopped':<15} {'val_acc':>7} {'val_f1':>7} {'val_loss':>8}")
    for title, job in rows:
        r = job.get("result") or {}
        fmt = lambda k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
        print(f"{title:<36} {job['status']:<10} {job['epoch']:>6} {job['stopped_reason'] or '-':<15} "
              f"{fmt('val_accuracy'):>7} {fmt('val_f1'):>7} {fmt('val_loss'):>8}")


if __name__ == "__main__":
    sys.exit(main())
