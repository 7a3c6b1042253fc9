"""JSON Schemas and the AsyncAPI 3.0 document, generated from the contract models.

    python -m subswitch.schemas docs          # (re)write docs/schemas/*.json, docs/asyncapi.json
    python -m subswitch.schemas docs --check  # exit 1 listing the files that are stale

Output is deterministic (sorted keys, two-space indent, trailing newline), so the
checked-in files can be compared with freshly generated ones.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import DEFAULT_REF_TEMPLATE

from subswitch import __version__
from subswitch.broker import COMMANDS_EXCHANGE, DEAD_LETTER
from subswitch.contract import (
    APPLY_BATCH_TASK,
    APPLY_TASK,
    COMMAND_ADAPTER,
    DEAD_LETTER_QUEUE,
    EVENT_CONTENT_TYPE,
    EVENTS_EXCHANGE,
    WIRE_REQUIRED,
    ChangeBlockStatus,
    ChangeServiceStatus,
    Lane,
    Outcome,
    ResultEvent,
    result_event,
)
from subswitch.signing import CHUNK_SIGNATURE_HEADER, SIGNATURE_FIELD, Signature

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
COMPONENTS_REF: Final = "#/components/schemas/{model}"
_AMQP_BINDING: Final = "0.3.0"


# --- JSON Schemas ---------------------------------------------------------------------


def command_schema(model: type[BaseModel], ref_template: str = DEFAULT_REF_TEMPLATE) -> Any:
    """The wire schema of one command type (``WIRE_REQUIRED`` fields required)."""
    return _require_wire_fields(model.model_json_schema(ref_template=ref_template))


def command_union_schema(ref_template: str = DEFAULT_REF_TEMPLATE) -> Any:
    """Either command, told apart by ``type``."""
    schema = COMMAND_ADAPTER.json_schema(ref_template=ref_template)
    for name in ("ChangeServiceStatus", "ChangeBlockStatus"):
        _require_wire_fields(schema["$defs"][name])
    schema["title"] = "Command"
    schema["description"] = "A subswitch command (schema version 1): either type."
    return schema


def result_event_schema(ref_template: str = DEFAULT_REF_TEMPLATE) -> Any:
    """The result event as published: every field present, ``detailMsg`` spelt so."""
    schema = ResultEvent.model_json_schema(
        by_alias=True, mode="serialization", ref_template=ref_template
    )
    for part in [schema, *schema.get("$defs", {}).values()]:
        if "properties" in part:  # model_dump_json always writes every field
            part["required"] = sorted(part["properties"])
    return schema


def json_schemas() -> dict[str, Any]:
    """``{file name: schema}`` for ``docs/schemas/``."""
    schemas = {
        "ChangeServiceStatus.json": command_schema(ChangeServiceStatus),
        "ChangeBlockStatus.json": command_schema(ChangeBlockStatus),
        "Command.json": command_union_schema(),
        "ResultEvent.json": result_event_schema(),
    }
    return {name: {"$schema": JSON_SCHEMA_DIALECT, **schema} for name, schema in schemas.items()}


def _require_wire_fields(schema: dict[str, Any]) -> dict[str, Any]:
    schema["required"] = sorted({*schema.get("required", ()), *WIRE_REQUIRED})
    schema["properties"][SIGNATURE_FIELD] = signature_schema()
    return schema


def signature_schema() -> dict[str, Any]:
    """The optional ``signature`` member a command travels with (contract §8)."""
    schema: dict[str, Any] = Signature.model_json_schema()
    schema.pop("title", None)
    schema["properties"]["value"]["contentEncoding"] = "base64"
    schema["description"] = (
        "Not part of the command: its producer's Ed25519 signature over the command's "
        "canonical bytes (README, Security). Required when the workers enforce a policy "
        "(SUBSWITCH_POLICY_FILE); ignored otherwise."
    )
    return schema


# --- AsyncAPI ---------------------------------------------------------------------------


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of subswitch's queues, exchange, messages and operations."""
    return {
        "asyncapi": "3.0.0",
        "id": "urn:subswitch",
        "info": _info(),
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": {
            **{lane.queue: _lane_channel(lane) for lane in Lane},
            DEAD_LETTER_QUEUE: _dead_letter_channel(),
            EVENTS_EXCHANGE: _events_channel(),
        },
        "operations": _operations(),
        "components": {"schemas": _component_schemas(), "messages": _messages()},
    }


def _info() -> dict[str, Any]:
    return {
        "title": "subswitch",
        "version": __version__,
        "description": (
            "Producers enqueue commands (ChangeServiceStatus, ChangeBlockStatus) on one of "
            "three lane queues; workers apply them to the MasStack customers API v2 and "
            "publish one CloudEvents result event per command to the topic exchange "
            f"`{EVENTS_EXCHANGE}`.\n\n"
            "Commands travel as **Celery task protocol v2** messages with the JSON "
            f"serializer (never pickle): task name `{APPLY_TASK}`, task id = the "
            "command's `command_id`, body `[args, kwargs, embed]` with `args = [command]` "
            f"and empty `kwargs`. Bulk producers may send `{APPLY_BATCH_TASK}` with "
            "`args = [[command, ...]]`. Each lane queue is bound to the topic exchange "
            f"`{COMMANDS_EXCHANGE.name}` by its own name."
        ),
        "license": {"name": "Apache-2.0"},
    }


def _servers() -> dict[str, Any]:
    return {
        "rabbitmq": {
            "host": "localhost:5672",
            "pathname": "/",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": (
                "RabbitMQ. Lane and dead-letter queues are durable quorum queues "
                "(`x-queue-type`, configurable); publishes are confirmed."
            ),
        },
        "redis": {
            "host": "localhost:6379",
            "protocol": "redis",
            "description": (
                "Redis through kombu's virtual transport (also the embedded default "
                "broker). A queue is a Redis list of JSON envelopes holding the message "
                "body (base64), headers and properties; exchange bindings live in "
                "`_kombu.binding.<exchange>` sets."
            ),
        },
    }


def _lane_channel(lane: Lane) -> dict[str, Any]:
    return {
        "address": lane.queue,
        "title": f"{lane.value} lane",
        "description": (
            f"Durable queue of the {lane.value} lane, bound to `{COMMANDS_EXCHANGE.name}` "
            f"(topic) with routing key `{lane.queue}`. A command's `priority` selects it. "
            "Producers declare it exactly as workers do, so commands sent before any "
            "worker started are kept."
        ),
        "messages": {
            "applyCommand": {"$ref": "#/components/messages/applyCommand"},
            "applyBatch": {"$ref": "#/components/messages/applyBatch"},
        },
        "bindings": {"amqp": _amqp_queue_binding(lane.queue)},
    }


def _dead_letter_channel() -> dict[str, Any]:
    return {
        "address": DEAD_LETTER_QUEUE,
        "title": "dead letters",
        "description": (
            "Durable queue (bound to the direct exchange "
            f"`{DEAD_LETTER.name}`) keeping messages the worker could not decode, "
            "validate or authorise, with the reason. Each is also reported as a "
            "`rejected` result event."
        ),
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        "bindings": {"amqp": _amqp_queue_binding(DEAD_LETTER_QUEUE)},
    }


def _events_channel() -> dict[str, Any]:
    return {
        "address": "command.{outcome}",
        "title": "result events",
        "description": (
            f"Topic exchange `{EVENTS_EXCHANGE}`: one terminal event per command, routing "
            "key `command.<outcome>`. Subscribers bind their own queue, e.g. with "
            "`command.#` for every event or `command.failed` for failures only."
        ),
        "parameters": {
            "outcome": {
                "enum": [outcome.value for outcome in Outcome],
                "description": "The command's terminal outcome.",
            }
        },
        "messages": {"resultEvent": {"$ref": "#/components/messages/resultEvent"}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": EVENTS_EXCHANGE,
                    "type": "topic",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": _AMQP_BINDING,
            }
        },
    }


def _amqp_queue_binding(name: str) -> dict[str, Any]:
    return {
        "is": "queue",
        "queue": {
            "name": name,
            "durable": True,
            "exclusive": False,
            "autoDelete": False,
            "vhost": "/",
        },
        "bindingVersion": _AMQP_BINDING,
    }


def _operations() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for lane in Lane:
        suffix = lane.value.capitalize()
        messages = [
            {"$ref": f"#/channels/{lane.queue}/messages/applyCommand"},
            {"$ref": f"#/channels/{lane.queue}/messages/applyBatch"},
        ]
        operations[f"send{suffix}Command"] = _operation(
            "send", lane.queue, messages, "producer", f"Enqueue a command on the {lane} lane."
        )
        operations[f"receive{suffix}Command"] = _operation(
            "receive", lane.queue, messages, "worker", f"Apply commands of the {lane} lane."
        )
    dead = [{"$ref": f"#/channels/{DEAD_LETTER_QUEUE}/messages/deadLetter"}]
    events = [{"$ref": f"#/channels/{EVENTS_EXCHANGE}/messages/resultEvent"}]
    operations["sendDeadLetter"] = _operation(
        "send", DEAD_LETTER_QUEUE, dead, "worker", "Keep a message that is not a valid command."
    )
    operations["receiveDeadLetter"] = _operation(
        "receive", DEAD_LETTER_QUEUE, dead, "operator", "Inspect dead letters."
    )
    operations["sendResultEvent"] = _operation(
        "send", EVENTS_EXCHANGE, events, "worker", "Publish a command's terminal outcome."
    )
    operations["receiveResultEvent"] = _operation(
        "receive", EVENTS_EXCHANGE, events, "subscriber", "Follow outcomes (own queue)."
    )
    return operations


def _operation(
    action: str, channel: str, messages: list[dict[str, str]], role: str, summary: str
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": messages,
        "summary": summary,
        "tags": [{"name": role}],
    }


def _messages() -> dict[str, Any]:
    return {
        "applyCommand": _task_message(
            APPLY_TASK, "ApplyCommandBody", "One command; the task id is its command_id."
        ),
        "applyBatch": _task_message(
            APPLY_BATCH_TASK, "ApplyBatchBody", "Many commands in one message (bulk)."
        ),
        "deadLetter": {
            "name": "deadLetter",
            "title": "dead letter",
            "summary": "The original message body, unchanged (it may not even be JSON).",
            "contentType": "application/octet-stream",
            "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
            "payload": {"description": "The body as received, bytes."},
            "bindings": {"amqp": {"contentEncoding": "binary", "bindingVersion": _AMQP_BINDING}},
        },
        "resultEvent": {
            "name": "resultEvent",
            "title": "result event",
            "summary": "CloudEvents 1.0, structured mode; the AMQP message id is the event id.",
            "contentType": EVENT_CONTENT_TYPE,
            "payload": {"$ref": "#/components/schemas/ResultEvent"},
            "bindings": {"amqp": {"contentEncoding": "utf-8", "bindingVersion": _AMQP_BINDING}},
            "examples": [{"name": "applied", "payload": _example_event()}],
        },
    }


def _task_message(task: str, body: str, summary: str) -> dict[str, Any]:
    return {
        "name": task,
        "title": f"Celery task {task}",
        "summary": summary,
        "description": (
            "A Celery task protocol v2 message, JSON serializer: the task name and id are "
            "in the headers (`task`, `id`; the id is also the `correlation_id` property), "
            "the body is `[args, kwargs, embed]`."
        ),
        "contentType": "application/json",
        "headers": {"$ref": f"#/components/schemas/{_headers_schema_name(task)}"},
        "payload": {"$ref": f"#/components/schemas/{body}"},
        "correlationId": {"location": "$message.header#/id"},
        "bindings": {"amqp": {"contentEncoding": "utf-8", "bindingVersion": _AMQP_BINDING}},
    }


def _headers_schema_name(task: str) -> str:
    return "ApplyCommandHeaders" if task == APPLY_TASK else "ApplyBatchHeaders"


def _component_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for name, schema in (
        ("ChangeServiceStatus", command_schema(ChangeServiceStatus, COMPONENTS_REF)),
        ("ChangeBlockStatus", command_schema(ChangeBlockStatus, COMPONENTS_REF)),
        ("Command", command_union_schema(COMPONENTS_REF)),
        ("ResultEvent", result_event_schema(COMPONENTS_REF)),
    ):
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    # AsyncAPI's schema format (JSON Schema draft 07 superset) spells it as a string.
    schemas["Command"]["discriminator"] = "type"
    schemas.update(_celery_schemas())
    return schemas


def _celery_schemas() -> dict[str, Any]:
    command = {"$ref": COMPONENTS_REF.format(model="Command")}
    return {
        "ApplyCommandHeaders": _celery_headers(APPLY_TASK),
        "ApplyBatchHeaders": _celery_headers(APPLY_BATCH_TASK),
        "ApplyCommandBody": _celery_body(
            {"type": "array", "items": [command], "minItems": 1, "maxItems": 1},
            "args: exactly one command, as JSON.",
        ),
        "ApplyBatchBody": _celery_body(
            {
                "type": "array",
                "items": [{"type": "array", "items": command, "minItems": 1}],
                "minItems": 1,
                "maxItems": 1,
            },
            "args: one list of commands.",
        ),
        "DeadLetterHeaders": {
            "type": "object",
            "properties": {
                "x-subswitch-reason": {"type": "string", "description": "Why it was refused."},
                "command_id": {"type": "string", "description": "If it could be read."},
                "x-subswitch-policy-rule": {
                    "type": "string",
                    "description": "The policy check that refused the command (contract §8): "
                    "unsigned, unknown-key, bad-signature, unknown-producer, source, "
                    "not-allowed.",
                },
            },
            "required": ["x-subswitch-reason"],
        },
    }


def _celery_headers(task: str) -> dict[str, Any]:
    headers = _celery_protocol_headers(task)
    if task == APPLY_BATCH_TASK:
        headers["properties"][CHUNK_SIGNATURE_HEADER] = {
            "type": "string",
            "pattern": r"^[A-Za-z0-9._:-]{1,64}:[A-Za-z0-9+/]+={0,2}$",
            "description": (
                "Optional: `<key_id>:<base64>`, the producer's Ed25519 signature over the "
                "whole chunk (README, Security); a worker with a policy then verifies the "
                "chunk once instead of each command's own signature."
            ),
        }
    return headers


def _celery_protocol_headers(task: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Celery protocol v2 headers (only those subswitch relies on listed).",
        "properties": {
            "lang": {"const": "py"},
            "task": {"const": task},
            "id": {"type": "string", "description": "Task id: the command_id."},
            "root_id": {"type": ["string", "null"]},
            "parent_id": {"type": ["string", "null"]},
            "retries": {"type": "integer", "minimum": 0},
            "eta": {"type": ["string", "null"], "format": "date-time"},
            "expires": {"type": ["string", "null"], "description": "Never set: see not_after."},
            "origin": {"type": "string", "description": "Sender's nodename."},
        },
        "required": ["lang", "task", "id"],
    }


def _celery_body(args: dict[str, Any], args_description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "description": "Celery protocol v2 body: [args, kwargs, embed].",
        "items": [
            {**args, "description": args_description},
            {"type": "object", "maxProperties": 0, "description": "kwargs: always empty."},
            {
                "type": "object",
                "description": "embed: callbacks, errbacks, chain, chord (unused, null).",
            },
        ],
        "minItems": 3,
        "maxItems": 3,
        "additionalItems": False,
    }


def _example_event() -> Any:
    moment = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)
    command = ChangeBlockStatus(
        command_id="fraud-case-8812-block",
        org_id="telco",
        subscription_id=214748364,
        block_id=1,
        active=True,
        reason="stolen",
        issued_at=moment,
        priority=Lane.URGENT,
        source="fraud-engine",
        correlation_id="case-8812",
    )
    event = result_event(
        command, outcome=Outcome.APPLIED, attempts=2, completed_at=moment, upstream_status=201
    )
    return json.loads(event.to_json())


# --- files ------------------------------------------------------------------------------


def render(document: Any) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def documents() -> dict[str, str]:
    """``{path relative to the docs directory: text}`` of every generated file."""
    files = {f"schemas/{name}": render(schema) for name, schema in json_schemas().items()}
    files["asyncapi.json"] = render(asyncapi())
    return files


def write(directory: Path) -> list[Path]:
    """Write every generated file under ``directory``; the paths written."""
    written = []
    for relative, text in documents().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path) -> list[Path]:
    """Generated files under ``directory`` that are missing or differ from fresh output."""
    return [
        directory / relative
        for relative, text in documents().items()
        if not _has_text(directory / relative, text)
    ]


def _has_text(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text(encoding="utf-8") == text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m subswitch.schemas DIR [--check]``; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m subswitch.schemas", description=__doc__)
    parser.add_argument("directory", type=Path, help="docs directory, e.g. docs")
    parser.add_argument("--check", action="store_true", help="exit 1 if any file is stale")
    args = parser.parse_args(argv)
    if not args.check:
        for path in write(args.directory):
            print(f"wrote {path}")
        return 0
    outdated = stale(args.directory)
    for path in outdated:
        print(f"stale: {path}")
    if outdated:
        print("run `make docs` to regenerate them")
    return 1 if outdated else 0


if __name__ == "__main__":
    raise SystemExit(main())
