"""The generated JSON Schemas and AsyncAPI document: checked in, fresh, and complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from subswitch import schemas
from subswitch.contract import (
    APPLY_TASK,
    EVENT_CONTENT_TYPE,
    InvalidCommand,
    Lane,
    Outcome,
    parse_command,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
LANE_CHANNELS = {"subswitch.urgent", "subswitch.normal", "subswitch.bulk"}


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return schemas.asyncapi()


def test_checked_in_docs_are_fresh() -> None:
    # Given the files under docs/ / When compared with freshly generated ones
    stale = schemas.stale(DOCS)
    # Then none differs
    assert not stale, (
        f"stale generated docs: {', '.join(str(p.relative_to(DOCS)) for p in stale)}; "
        "run `make docs` and commit the result"
    )


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given freshly written docs, one of which is then edited
    schemas.main([str(tmp_path)])
    (tmp_path / "schemas" / "Command.json").write_text("{}\n")
    capsys.readouterr()
    # When checked
    code = schemas.main([str(tmp_path), "--check"])
    # Then it exits 1 naming that file only, and tells how to fix it
    out = capsys.readouterr().out
    assert code == 1
    assert "stale: " in out
    assert "Command.json" in out
    assert "ChangeBlockStatus.json" not in out
    assert "make docs" in out


def test_check_mode_passes_on_fresh_docs(tmp_path: Path) -> None:
    # Given / When freshly written docs are checked / Then exit 0
    schemas.write(tmp_path)
    assert schemas.main([str(tmp_path), "--check"]) == 0


def test_output_is_deterministic() -> None:
    # Given / When generated twice / Then byte-identical, sorted, newline-terminated
    first, second = schemas.documents(), schemas.documents()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n")
        assert text == schemas.render(json.loads(text))


def test_wire_required_fields_are_what_parse_command_requires() -> None:
    # Given a valid wire command
    wire = {
        "type": "ChangeBlockStatus", "schema_version": 1, "command_id": "fraud-case-8812",
        "org_id": "telco", "subscription_id": 5, "block_id": 1, "active": True,
        "issued_at": "2026-11-22T10:00:00Z", "source": "fraud-engine",
    }  # fmt: skip
    parse_command(wire)
    # When each field the schema requires beyond the model's own is left out
    # Then parse_command refuses the message
    for name in schemas.WIRE_REQUIRED:
        with pytest.raises(InvalidCommand, match=name):
            parse_command({k: v for k, v in wire.items() if k != name})


def test_command_schema_requires_the_wire_fields() -> None:
    # Given / When the union schema is generated
    union = schemas.json_schemas()["Command.json"]
    # Then both command types require the envelope fields a worker never invents
    for name in ("ChangeServiceStatus", "ChangeBlockStatus"):
        assert set(schemas.WIRE_REQUIRED) <= set(union["$defs"][name]["required"])
    assert union["discriminator"]["propertyName"] == "type"


def test_result_event_schema_uses_the_published_spelling() -> None:
    # Given / When / Then the error's detail is spelt as published, and all fields required
    event = schemas.json_schemas()["ResultEvent.json"]
    error = event["$defs"]["EventError"]
    assert "detailMsg" in error["properties"]
    assert error["required"] == sorted(error["properties"])


def test_asyncapi_has_the_lane_dead_letter_and_event_channels(asyncapi: dict[str, Any]) -> None:
    # Given / When the AsyncAPI document is generated
    channels = asyncapi["channels"]
    # Then it is AsyncAPI 3.0 with one channel per lane queue, the dead-letter queue and
    # the events exchange, addressed as the broker names them
    assert asyncapi["asyncapi"] == "3.0.0"
    assert set(channels) == {*LANE_CHANNELS, "subswitch.dead", "subswitch.events"}
    for lane in Lane:
        channel = channels[lane.queue]
        assert channel["address"] == lane.queue
        assert channel["bindings"]["amqp"]["queue"]["durable"] is True
    events = channels["subswitch.events"]
    assert events["address"] == "command.{outcome}"
    assert events["parameters"]["outcome"]["enum"] == [o.value for o in Outcome]
    assert events["bindings"]["amqp"]["exchange"] == {
        "name": "subswitch.events", "type": "topic", "durable": True, "autoDelete": False,
        "vhost": "/",
    }  # fmt: skip


def test_asyncapi_describes_the_celery_task_message(asyncapi: dict[str, Any]) -> None:
    # Given / When / Then the command message is a Celery protocol-2 JSON message
    message = asyncapi["components"]["messages"]["applyCommand"]
    assert message["name"] == APPLY_TASK
    assert message["contentType"] == "application/json"
    assert "protocol v2" in message["description"]
    assert "protocol v2" in asyncapi["info"]["description"]
    schemas_ = asyncapi["components"]["schemas"]
    assert schemas_["ApplyCommandHeaders"]["properties"]["task"] == {"const": APPLY_TASK}
    body = schemas_["ApplyCommandBody"]
    assert body["items"][0]["items"] == [{"$ref": "#/components/schemas/Command"}]
    assert asyncapi["components"]["messages"]["resultEvent"]["contentType"] == (EVENT_CONTENT_TYPE)


def test_asyncapi_operations_send_and_receive(asyncapi: dict[str, Any]) -> None:
    # Given / When the operations are listed
    operations = asyncapi["operations"]
    by_channel: dict[str, set[str]] = {}
    for operation in operations.values():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        by_channel.setdefault(channel, set()).add(operation["action"])
    # Then every channel is both sent to and received from
    assert by_channel == {name: {"send", "receive"} for name in asyncapi["channels"]}


def test_asyncapi_references_all_resolve(asyncapi: dict[str, Any]) -> None:
    # Given every $ref in the document / When followed / Then each lands on an object
    for ref in _refs(asyncapi):
        node: Any = asyncapi
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref
    assert "$defs" not in json.dumps(asyncapi)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
