"""Starting weights from torchvision's cache under TORCH_HOME (never the network), and the model file."""

import json
import re

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from worker.engine.architectures import ARCHITECTURES
from worker.engine.data import Preprocessing, eval_transform
from worker.engine.weights import (IMAGENET_MEAN, IMAGENET_STD, WeightsError, build_model, cached_weights_path,
                                   load_model_file, model_file_preprocessing, preprocessing, save_model_file)

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

    save_model_file(model, path, arch="resnet18", classes=["zero", "one", "two"],
                    prep=Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD, resize_ratio=1.15, interpolation="bicubic"))
    state, metadata = load_model_file(path)

    expected = model.state_dict()
    assert set(state) == set(expected), "the file holds the whole state dict"
    assert {"fc.weight", "layer1.0.conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked"} <= set(state), \
        "torchvision's key names"
    assert [k for k in expected if state[k].dtype != expected[k].dtype or not torch.equal(state[k], expected[k])] == [], \
        "every tensor comes back unchanged"
    assert metadata["arch"] == "resnet18"
    assert json.loads(metadata["classes"]) == ["zero", "one", "two"], "classes as a JSON list, in order"
    assert int(metadata["image_size"]) == 32 and int(metadata["resize_size"]) == 37, "crop and resize sizes"
    assert float(metadata["resize_ratio"]) == 1.15, "the exact ratio, for later jobs at other sizes"
    assert metadata["interpolation"] == "bicubic"
    assert json.loads(metadata["mean"]) == list(IMAGENET_MEAN) and json.loads(metadata["std"]) == list(IMAGENET_STD)
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_model_file_starts_a_new_model(tmp_path):
    """An earlier job's model file as `init_state`: its body is kept and the head is new."""
    earlier = build_model(RESNET18, num_classes=5, weights=None, seed=1)
    path = tmp_path / "model.safetensors"
    save_model_file(earlier, path, arch="resnet18", classes=list("abcde"),
                    prep=Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD))
    init_state, _ = load_model_file(path)

    model = build_model(RESNET18, num_classes=3, weights=None, init_state=init_state)

    state = model.state_dict()
    assert [k for k in init_state if not k.startswith("fc.") and not torch.equal(state[k], init_state[k])] == [], \
        "every tensor outside the head comes from the earlier model"
    assert model.fc.out_features == 3, "the head is new, for 3 classes"


def photo() -> Image.Image:
    """A 300x260 RGB image with detail at every scale, so resizing and cropping differences show."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8))


@pytest.mark.parametrize(("arch", "weights", "resize", "interpolation"), [
    ("resnet50", "IMAGENET1K_V2", 232, "bilinear"), ("efficientnet_b0", "DEFAULT", 256, "bicubic"),
], ids=["resnet50 v2", "efficientnet_b0"])
def test_evaluation_preprocessing_is_the_weights_own(arch, weights, resize, interpolation):
    preset = torchvision.models.get_model_weights(arch)[weights].transforms()

    p = preprocessing(arch, weights, 224)

    assert (p.resize, p.interpolation) == (resize, interpolation), "the preset's resize margin and interpolation"
    assert torch.equal(eval_transform(p)(photo()), preset(photo())), "the same tensor as weights.transforms()"


def test_preprocessing_scales_the_margin_to_the_image_size():
    assert preprocessing("resnet50", "IMAGENET1K_V2", 112).resize == 116, "232/224 of 112 px"
    assert preprocessing("efficientnet_b1", "IMAGENET1K_V2", 40).resize == 43, "255/240 of 40 = 42.5, rounded up"
    assert preprocessing("resnet50", None, 112) == Preprocessing(112, IMAGENET_MEAN, IMAGENET_STD), \
        "a randomly initialised model: ImageNet statistics, no margin"


def test_unknown_weights_are_a_weights_error():
    with pytest.raises(WeightsError, match="resnet18 has no torchvision weights named 'IMAGENET9K'"):
        preprocessing("resnet18", "IMAGENET9K", 224)


def test_a_model_files_preprocessing_carries_over_to_a_new_size():
    metadata = {"image_size": "100", "resize_size": "114", "resize_ratio": repr(256 / 224),
                "interpolation": "bicubic", "mean": json.dumps([0.5] * 3), "std": json.dumps([0.25] * 3)}

    p = model_file_preprocessing(metadata, 224)

    assert p == Preprocessing(224, (0.5,) * 3, (0.25,) * 3, resize_ratio=256 / 224, interpolation="bicubic")
    assert p.resize == 256, "the exact ratio, not 114/100 rounded again"
    older = {k: v for k, v in metadata.items() if k not in ("resize_size", "resize_ratio", "interpolation")}
    assert model_file_preprocessing(older, 112).resize == 112, "a file without a margin gets none"
