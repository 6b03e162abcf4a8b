"""The base-model catalogue route."""

from fastapi import APIRouter

from api.schemas import ModelOut, Page
from models.catalogue import catalogue
from models.errors import not_found

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=Page[ModelOut], summary="Architectures with their ordered layer groups")
def list_models() -> Page[ModelOut]:
    return Page(data=[ModelOut(**m) for m in catalogue().values()], has_more=False)


@router.get("/{name}", response_model=ModelOut)
def get_model(name: str) -> ModelOut:
    if name not in catalogue():
        raise not_found("model", name, "name")
    return ModelOut(**catalogue()[name])
