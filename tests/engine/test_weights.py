"""Starting weights from torchvision's cache under TORCH_HOME (never the network), and the model file."""

import json
import re

import pytest
import torch
import torchvision

from worker.engine.architectures import ARCHITECTURES
from worker.engine.weights import (IMAGENET_MEAN, IMAGENET_STD, WeightsError, build_model, cached_weights_path,
                                   load_model_file, save_model_file)

RESNET18 = ARCHITECTURES["resnet18"]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_missing_cached_weights_name_the_file_to_provide(torch_home):
    path = cached_weights_path("resnet18", "DEFAULT")
    assert path.is_relative_to(torch_home), "the cache follows TORCH_HOME"

    with pytest.raises(WeightsError, match=re.escape(str(path))):
        build_model(RESNET18, num_classes=3, weights="DEFAULT", allow_download=False)


def test_unknown_weights_name_is_a_weights_error(torch_home):
    with pytest.raises(WeightsError, match="resnet18 has no torchvision weights named 'NOPE'"):
        build_model(RESNET18, num_classes=3, weights="NOPE", allow_download=False)


def test_cached_weights_are_loaded_and_the_head_replaced(torch_home):
    path = cached_weights_path("resnet18", "DEFAULT")
    path.parent.mkdir(parents=True)
    saved = torchvision.models.get_model("resnet18", weights=None).state_dict()  # 1000 classes, like ImageNet's
    torch.save(saved, path)

    model = build_model(RESNET18, num_classes=3, weights="DEFAULT", allow_download=False)

    state = model.state_dict()
    assert set(state) == set(saved), "torchvision's key names"
    assert [k for k in saved if not k.startswith("fc.") and not torch.equal(state[k], saved[k])] == [], \
        "every tensor outside the head is the cached one"
    assert model.fc.out_features == 3 and state["fc.weight"].shape == (3, 512), "the head has 3 outputs"


def test_model_file_round_trip(tmp_path):
    model = build_model(RESNET18, num_classes=3, weights=None)
    model.bn1.running_mean.uniform_()  # a buffer that is not at its initial value
    path = tmp_path / "model.safetensors"

    save_model_file(model, path, arch="resnet18", classes=["zero", "one", "two"], image_size=32,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
    state, metadata = load_model_file(path)

    expected = model.state_dict()
    assert set(state) == set(expected), "the file holds the whole state dict"
    assert {"fc.weight", "layer1.0.conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked"} <= set(state), \
        "torchvision's key names"
    assert [k for k in expected if state[k].dtype != expected[k].dtype or not torch.equal(state[k], expected[k])] == [], \
        "every tensor comes back unchanged"
    assert metadata["arch"] == "resnet18"
    assert json.loads(metadata["classes"]) == ["zero", "one", "two"], "classes as a JSON list, in order"
    assert int(metadata["image_size"]) == 32
    assert json.loads(metadata["mean"]) == list(IMAGENET_MEAN) and json.loads(metadata["std"]) == list(IMAGENET_STD)
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_model_file_starts_a_new_model(tmp_path):
    """An earlier job's model file as `init_state`: its body is kept and the head is new."""
    earlier = build_model(RESNET18, num_classes=5, weights=None, seed=1)
    path = tmp_path / "model.safetensors"
    save_model_file(earlier, path, arch="resnet18", classes=list("abcde"), image_size=32,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
    init_state, _ = load_model_file(path)

    model = build_model(RESNET18, num_classes=3, weights=None, init_state=init_state)

    state = model.state_dict()
    assert [k for k in init_state if not k.startswith("fc.") and not torch.equal(state[k], init_state[k])] == [], \
        "every tensor outside the head comes from the earlier model"
    assert model.fc.out_features == 3, "the head is new, for 3 classes"
