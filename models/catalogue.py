"""The base-model catalogue (architectures, their ordered layer groups, image size, weights names).

Generated from the engine by `python -m worker.engine.catalogue > models/catalogue.json`, so the API can
describe and validate models without importing torch.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache
def catalogue() -> dict[str, dict[str, Any]]:
    return json.loads((Path(__file__).parent / "catalogue.json").read_text())


def group_names(arch: str) -> list[str]:
    return [g["name"] for g in catalogue()[arch]["groups"]]
