"""One direction of imports: the API never loads torch; the engine loads no service framework."""

import subprocess
import sys

import pytest


def modules_after_import(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"UNFREEZE_VAR": "/tmp/unfreeze-layering", "PATH": ""}).stdout
    return {name.split(".")[0] for name in out.split()}


def test_api_process_never_imports_torch():
    loaded = modules_after_import("import api.app")
    assert "torch" not in loaded and "torchvision" not in loaded
    assert "worker" not in loaded, "api must not depend on worker"


@pytest.mark.parametrize("module", ["worker.engine.trainer", "worker.engine.weights", "worker.engine.data",
                                    "worker.engine.catalogue"])
def test_engine_imports_no_service_framework(module):
    loaded = modules_after_import(f"import {module}")
    assert not loaded & {"celery", "sqlalchemy", "fastapi", "models", "api", "kombu"}, loaded & {
        "celery", "sqlalchemy", "fastapi", "models", "api", "kombu"}
