"""HTTP app of a replica: the engine's OpenAI-compatible app plus Estuary's own routes.

The OpenAI routes are the engine's (vLLM's FastAPI app), not reimplemented here. Estuary adds:
- `POST /v1/estuary/topk_logprobs` {texts, k, model} → the `TopKLogprobs` payload (schema_version 1);
- `GET /v1/estuary/schema/topk_logprobs` → that payload's JSON Schema;
- `GET /v1/estuary/adapters` → published adapter versions;
- `GET /v1/estuary/info` → model, engine, dtype, limits.
Errors use the OpenAI error shape `{"error": {"message", "type", "code"}}` with a 4xx status for bad input.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from estuary.serve.types import ServeError, TopKLogprobs


class TopKRequest(BaseModel):
    """Body of POST /v1/estuary/topk_logprobs."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="Texts to score.")
    k: int = Field(5, ge=1, description="Log-probabilities kept per position.")
    model: str | None = Field(None, description="The base model id, or an adapter 'name' / 'name@vN'.")


def error_response(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


def _from_exception(exc: BaseException) -> JSONResponse:
    if isinstance(exc, ServeError):
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(exc.status, "InternalServerError")
        return error_response(exc.status, str(exc), kind)
    return error_response(500, f"{type(exc).__name__}: {exc}", "InternalServerError")


def build_http_app(engine_app: Any, server: Any) -> FastAPI:
    """Mount Estuary's routes on the engine's app (or on an app of their own for engines without one)."""
    app: FastAPI = engine_app if engine_app is not None else FastAPI(title="estuary server LLM")

    @app.post("/v1/estuary/topk_logprobs")
    async def topk_logprobs(body: TopKRequest) -> Any:
        try:
            payload = await server.topk_logprobs(body.texts, body.k, body.model)
        except Exception as exc:
            return _from_exception(exc)
        return JSONResponse(payload.to_dict())

    @app.get("/v1/estuary/schema/topk_logprobs")
    async def topk_schema() -> Any:
        return TopKLogprobs.json_schema()

    @app.get("/v1/estuary/adapters")
    async def adapters() -> Any:
        versions = await server.versions()
        return {"data": [v.to_dict() for vs in versions.values() for v in vs]}

    @app.get("/v1/estuary/info")
    async def info() -> Any:
        return await server.info()

    if engine_app is None:
        @app.exception_handler(RequestValidationError)
        async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
            return error_response(400, f"malformed request: {exc.errors()}")

        @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
        async def _no_openai(path: str) -> JSONResponse:
            return error_response(501, f"the {server.engine.name} engine serves in-cluster calls only; "
                                       f"/v1/{path} needs engine: vllm", "NotImplementedError")
    return app
