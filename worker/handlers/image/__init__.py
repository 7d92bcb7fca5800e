"""`image.resize`: batch image resizing for user uploads.

Needs the `image` extra (`pip install 'batchd[image]'`: Pillow). The handler is
resize.py; docs/handlers/image.md is the reference.
"""

from __future__ import annotations

from batchd.worker.handlers.image.resize import PARAMS_SCHEMA, ImageSettings, image_resize_handler

__all__ = ["PARAMS_SCHEMA", "ImageSettings", "image_resize_handler"]
