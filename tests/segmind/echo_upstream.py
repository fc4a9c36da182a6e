"""A fake upstream that quotes the ``x-api-key`` it was sent back in its error answers, as a
careless upstream or a proxy in front of it might; the prompt picks the answer."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

# Puts the key across the 1000-character cut of a stored message.
PADDING = 995


def echoing_upstream() -> FastAPI:
    """POST /v1/ic-light (and v2's submit) and GET /v1/get-user-credits, answering errors
    that quote the key."""
    app = FastAPI()

    @app.post("/v1/ic-light")
    @app.post("/v2/ic-light")
    async def relight(request: Request) -> Response:
        key = request.headers.get("x-api-key", "")
        if request.headers.get("content-type", "").startswith("application/json"):
            prompt = str((await request.json()).get("prompt"))
        else:
            prompt = str((await request.form()).get("prompt"))
        if prompt == "unauthorized":
            return JSONResponse({"error": f"API key {key} is not valid"}, 401)
        if prompt == "proxy":
            return PlainTextResponse(f"<html>bad gateway for key {key}</html>", 502)
        if prompt == "long":
            return JSONResponse({"error": "x" * PADDING + key}, 422)
        return JSONResponse({"error": f"Invalid parameters for key {key}: steps"}, 422)

    @app.get("/v1/get-user-credits")
    def credits(request: Request) -> JSONResponse:
        key = request.headers.get("x-api-key", "")
        return JSONResponse({"error": f"API key {key} is not valid"}, 401)

    return app
