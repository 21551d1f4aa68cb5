"""The HTTP ceiling on this machine: a Starlette POST endpoint that reads the JSON body and
answers 201 with a small JSON object, served exactly as `python -m app api` serves Skiplock's
API (app.http.server.serve: uvicorn, httptools, one process, the same bounds).
`python -m bench.empty_app PORT`."""

from __future__ import annotations

import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.http.server import serve
from app.settings import Settings


async def post(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"id": "0", "task": body.get("task"), "state": "queued"}, status_code=201)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/jobs", post, methods=["POST"]), Route("/health", health)])

if __name__ == "__main__":
    serve(app, Settings(database_url="postgresql://unused/unused"), host="127.0.0.1", port=int(sys.argv[1]))
