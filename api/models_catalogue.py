"""The base-model catalogue route."""

from fastapi import APIRouter, Depends

from api.auth import tenant_id
from api.schemas import ModelOut, Page, error_responses
from models.catalogue import catalogue
from models.errors import not_found

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(tenant_id)],
                   responses=error_responses(401, 503))


@router.get("", response_model=Page[ModelOut], summary="Architectures with their ordered layer groups")
def list_models() -> Page[ModelOut]:
    return Page(data=[ModelOut(**m) for m in catalogue().values()], has_more=False)


@router.get("/{name}", response_model=ModelOut, responses=error_responses(404))
def get_model(name: str) -> ModelOut:
    if name not in catalogue():
        raise not_found("model", name, "name")
    return ModelOut(**catalogue()[name])
