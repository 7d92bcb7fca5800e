"""A FastAPI app in front of batchd (README.md): `uvicorn --factory webapp:create_app`."""

from webapp.app import create_app

__all__ = ["create_app"]
