"""The base-model catalogue as data, for the API (which does not import torch).

`python -m worker.engine.catalogue` prints it; `models/catalogue.json` is its output, kept in step by a test.
"""

import json

import torchvision

from worker.engine.architectures import ARCHITECTURES, Architecture, layer_groups, meta_model


FIXED_SIZE_FAMILIES = ("vit", "maxvit")


def describe(arch: Architecture) -> dict:
    """The architecture as the API serves it; the model is built on the meta device (no memory, no weights)."""
    model = meta_model(arch)
    weights = torchvision.models.get_model_weights(arch.name)
    return {
        "name": arch.name,
        "family": arch.family,
        "image_size": arch.image_size,
        "min_image_size": arch.min_image_size,
        # Position embeddings (ViT) and window partitions (MaxViT) fix the input size.
        "fixed_image_size": arch.family in FIXED_SIZE_FAMILIES,
        "groups": [
            {"name": g.name, "modules": list(paths), "params": sum(p.numel() for p in g.parameters())}
            for g, (_, paths) in zip(layer_groups(model, arch), arch.groups, strict=True)
        ],
        "head_layer": arch.head_layer,
        "weights": ["DEFAULT", *(w.name for w in weights if _fits(arch, w))],
        "default_weights": weights.DEFAULT.name,
    }


def _fits(arch: Architecture, weights: torchvision.models.WeightsEnum) -> bool:
    """Weights for another image size cannot load into a fixed-size model (ViT's position embedding has one
    entry per patch): vit_b_16's SWAG_E2E_V1 is for 384 px, vit_h_14's SWAG_LINEAR_V1 for 224."""
    return arch.family not in FIXED_SIZE_FAMILIES or weights.transforms().crop_size[0] == arch.image_size


def catalogue() -> dict:
    return {name: describe(arch) for name, arch in ARCHITECTURES.items()}


if __name__ == "__main__":
    print(json.dumps(catalogue(), indent=2))
