"""OpenAPI fragments for the OpenAI (`/v1/videos`) and Vidu platform (`/ent/v2`) surfaces.

Their routes read the raw request (JSON or multipart) and answer in their provider's shapes, so
FastAPI cannot infer either: these are written out here, next to nothing else, and passed to the
route decorators (api/openai.py, api/vidu_platform.py). The shapes are those of service/shapes/
(openai.py, vidu_platform.py); their errors are those surfaces' envelopes, not SPEC §4's.
"""

from __future__ import annotations

from typing import Any

from reelq.api.vidu import RETRY_AFTER_HEADER, WWW_AUTHENTICATE_HEADER
from reelq.service.shapes.openai import ASPECT_RATIOS, SIZES

TOKEN_AUTH = "tokenAuth"
TOKEN_SCHEME: dict[str, Any] = {
    "type": "apiKey",
    "in": "header",
    "name": "Authorization",
    "description": "`Token <key>`: the Vidu platform's scheme, with a key from `reelq keys create`",
}

_NULLABLE_INT = {"type": ["integer", "null"]}
# --- OpenAI -----------------------------------------------------------------------------------------------
OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}
OPENAI_VIDEO: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["video"]},
        "model": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "in_progress", "completed", "failed"]},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "created_at": {"type": "integer"},
        "completed_at": _NULLABLE_INT,
        "expires_at": _NULLABLE_INT,
        "seconds": {"type": "string"},
        "size": {"type": "string", "enum": list(SIZES)},
        "remixed_from_video_id": {"type": "null"},
        "error": {
            "type": ["object", "null"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
    "required": ["id", "object", "model", "status", "progress", "created_at", "seconds", "size", "error"],
}
_OPENAI_CREATE_FIELDS: dict[str, Any] = {
    "prompt": {"type": "string"},
    "model": {"type": "string", "description": "A served model (default: the first)"},
    "seconds": {"type": "string", "pattern": "^[0-9]+$", "default": "4"},
    "size": {"type": "string", "enum": list(SIZES), "default": "720x1280"},
    "seed": {"type": "integer", "description": "reelq extension"},
    "callback_url": {"type": "string", "format": "uri", "description": "reelq extension"},
}


def _openai_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description}
    doc["content"] = {"application/json": {"schema": OPENAI_ERROR}}
    if headers:
        doc["headers"] = headers
    return doc


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _openai_error("Invalid parameter (OpenAI's error envelope)"),
    401: _openai_error("Missing, unknown or revoked key", {"WWW-Authenticate": WWW_AUTHENTICATE_HEADER}),
    404: _openai_error("No such video"),
    429: _openai_error("Rate limit (see Retry-After)", {"Retry-After": RETRY_AFTER_HEADER}),
}
OPENAI_VIDEO_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "The video object", "content": {"application/json": {"schema": OPENAI_VIDEO}}},
    **OPENAI_ERRORS,
}
OPENAI_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_OPENAI_CREATE_FIELDS,
                        "input_reference": {
                            "description": "The first frame: an image URL or data URI, or {image_url}",
                            "oneOf": [
                                {"type": "string"},
                                {"type": "object", "properties": {"image_url": {"type": "string"}}},
                            ],
                        },
                    },
                    "required": ["prompt"],
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **{name: {"type": "string"} for name in _OPENAI_CREATE_FIELDS},
                        "input_reference": {"type": "string", "format": "binary"},
                    },
                    "required": ["prompt"],
                }
            },
        },
    }
}
OPENAI_LIST_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of the key's videos",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "object": {"type": "string", "enum": ["list"]},
                        "data": {"type": "array", "items": OPENAI_VIDEO},
                        "first_id": {"type": ["string", "null"]},
                        "last_id": {"type": ["string", "null"]},
                        "has_more": {"type": "boolean"},
                    },
                    "required": ["object", "data", "has_more"],
                }
            }
        },
    },
    **OPENAI_ERRORS,
}
OPENAI_LIST_PARAMETERS: dict[str, Any] = {
    "parameters": [
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
    ]
}
OPENAI_DELETED_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "Deleted", "content": {"application/json": {"schema": {"type": "object"}}}},
    **OPENAI_ERRORS,
}
OPENAI_CONTENT_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The MP4 (variant=video; Range works) or its first frame (variant=thumbnail)",
        "content": {
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    302: {"description": "Stored in S3: the presigned link"},
    410: _openai_error("The video expired and was deleted"),
    **OPENAI_ERRORS,
}
OPENAI_CONTENT_PARAMETERS: dict[str, Any] = {
    "parameters": [
        {"name": "variant", "in": "query", "schema": {"type": "string", "enum": ["video", "thumbnail"]}}
    ]
}

# --- the Vidu platform ------------------------------------------------------------------------------------
PLATFORM_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "description": "e.g. FieldInvalid, FieldLacking, TaskNotFound"},
        "message": {"type": "string"},
        "param": {"type": ["string", "null"]},
    },
    "required": ["reason", "message"],
}


def _platform_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description}
    doc["content"] = {"application/json": {"schema": PLATFORM_ERROR}}
    if headers:
        doc["headers"] = headers
    return doc


PLATFORM_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _platform_error("Invalid or missing field (the platform's error shape)"),
    401: _platform_error(
        "Missing, unknown or revoked key", {"WWW-Authenticate": {"schema": {"type": "string"}}}
    ),
    404: _platform_error("No such task"),
    429: _platform_error("Rate limit (see Retry-After)", {"Retry-After": RETRY_AFTER_HEADER}),
}


def platform_create_body(images: int) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "model": {"type": "string"},
        "prompt": {"type": "string"},
        "duration": {"type": "integer"},
        "seed": {"type": "integer"},
        "aspect_ratio": {"type": "string", "enum": list(ASPECT_RATIOS)},
        "resolution": {"type": "string"},
        "callback_url": {"type": "string", "format": "uri"},
        "payload": {"type": "string", "description": "Echoed back"},
    }
    required = ["model", "prompt"]
    if images:
        properties["images"] = {
            "type": "array",
            "items": {"type": "string", "description": "An image URL or data URI"},
            "minItems": images,
            "maxItems": images,
        }
        required.append("images")
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


PLATFORM_CREATE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task was created: its id, `state: created`, the request echoed",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "task_id": {"type": "string"},
                        "state": {"type": "string", "enum": ["created"]},
                        "credits": {"type": "integer"},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                    "required": ["task_id", "state"],
                }
            }
        },
    },
    **PLATFORM_ERRORS,
}
PLATFORM_CREATIONS_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task's state and, once it succeeded, its video and cover links",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "state": {"type": "string", "enum": ["queueing", "processing", "success", "failed"]},
                        "err_code": {"type": "string"},
                        "err_msg": {"type": "string"},
                        "credits": {"type": "integer"},
                        "progress": {"type": "integer"},
                        "creations": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "url": {"type": "string"},
                                    "cover_url": {"type": "string"},
                                },
                            },
                        },
                    },
                    "required": ["id", "state", "creations"],
                }
            }
        },
    },
    **PLATFORM_ERRORS,
}
PLATFORM_CANCEL_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "Cancelled", "content": {"application/json": {"schema": {"type": "object"}}}},
    409: _platform_error("The task already finished"),
    **PLATFORM_ERRORS,
}
