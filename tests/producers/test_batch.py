"""Batch files: reading CSV and JSON Lines, validating rows, ids, chunking, flat memory."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from producers import AnyCommand
from producers.batch import (
    COLUMNS,
    BatchCheck,
    BatchFileError,
    BatchFormat,
    BatchSource,
    Row,
    RowBuilder,
    RowError,
    check_file,
    chunked,
    detect_format,
    generated_command_id,
)
from producers.batch_cli import BATCH_EPILOG
from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, Lane, parse_command

EXAMPLES = Path(__file__).parents[2] / "examples"
HEADER = "type,org_id,subscription_id,block_id,service_id,active,reason,priority,command_id\n"
GOOD_BLOCK = "block,telco,5,1,,true,stolen,,\n"
GOOD_SERVICE = "service,acme,7,,3,no,,bulk,\n"


def write(tmp_path: Path, content: str | bytes, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def rows(path: Path, *, batch_id: str = "b" * 16) -> list[Row]:
    return list(BatchSource(path).rows(RowBuilder(batch_id=batch_id, source="tests")))


def commands(path: Path, *, batch_id: str = "b" * 16) -> list[AnyCommand]:
    """The commands of a file every row of which is valid."""
    found = [result for _, result in rows(path, batch_id=batch_id)]
    assert not [r for r in found if isinstance(r, RowError)]
    return [r for r in found if not isinstance(r, RowError)]


def check(path: Path, **options: object) -> BatchCheck:
    builder = RowBuilder(batch_id="0" * 16, source="tests")
    return check_file(BatchSource(path), builder=builder, **options)  # type: ignore[arg-type]


def errors(path: Path) -> list[str]:
    return [str(result) for _, result in rows(path) if isinstance(result, RowError)]


# --- valid files --------------------------------------------------------------------


def test_the_example_files_are_valid_and_say_the_same() -> None:
    # Given the README's example files, CSV and JSON Lines
    # When both are read
    from_csv = commands(EXAMPLES / "batch.csv")
    from_jsonl = commands(EXAMPLES / "batch.jsonl")
    # Then every row is a bulk command, and both files ask for the same changes
    assert len(from_csv) == len(from_jsonl) == 6
    assert {c.priority for c in from_csv + from_jsonl} == {Lane.BULK}
    assert [(c.target, c.active) for c in from_csv] == [(c.target, c.active) for c in from_jsonl]


def test_cells_become_the_models_values(tmp_path: Path) -> None:
    # Given a CSV with spaced cells, mixed-case booleans and a contract type name
    path = write(
        tmp_path,
        "Type, org_id ,subscription_id,block_id,service_id,active,reason,not_after,source\n"
        " ChangeBlockStatus , telco , 214748364 , 2 ,, YES , lost ,2030-01-01T00:00:00Z,\n"
        "SERVICE,acme,7,,3,0,,,billing\n",
    )
    # When it is read
    [(line1, block), (line2, service)] = rows(path)
    # Then the row's values are typed, trimmed, with the batch's defaults
    assert (line1, line2) == (2, 3)
    assert isinstance(block, ChangeBlockStatus)
    assert (block.org_id, block.subscription_id, block.block_id) == ("telco", 214748364, 2)
    assert (block.active, block.reason, block.source) == (True, "lost", "tests")
    assert block.not_after is not None and block.not_after.year == 2030
    assert isinstance(service, ChangeServiceStatus)
    assert (service.service_id, service.active, service.source) == (3, False, "billing")


def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    # Given a CSV as Excel saves it: UTF-8 with a byte order mark, CRLF line ends
    content = (HEADER + GOOD_BLOCK).replace("\n", "\r\n")
    path = write(tmp_path, b"\xef\xbb\xbf" + content.encode())
    # When it is read
    [(line, command)] = rows(path)
    # Then the header's first column is "type" and the row is valid
    assert line == 2
    assert isinstance(command, ChangeBlockStatus)
    assert command.reason == "stolen"


def test_utf8_text_is_kept(tmp_path: Path) -> None:
    # Given a reason with accents and an emoji
    path = write(tmp_path, HEADER + "block,telco,5,1,,true,robo en Cádiz 📱,,\n")
    # When it is read / Then the reason is intact
    [(_, command)] = rows(path)
    assert isinstance(command, ChangeBlockStatus)
    assert command.reason == "robo en Cádiz 📱"


def test_jsonl_rows_take_json_values_and_skip_blank_lines(tmp_path: Path) -> None:
    # Given JSON Lines with native values, a 1 for active, and a blank line
    path = write(
        tmp_path,
        '{"type": "block", "org_id": "telco", "subscription_id": 5, "block_id": 1, "active": 1}\n'
        "\n"
        '{"type": "service", "org_id": "acme", "subscription_id": 7, "service_id": 3,'
        ' "active": "no", "reason": null, "schema_version": 1}\n',
        name="batch.jsonl",
    )
    # When it is read
    [(line1, block), (line3, service)] = rows(path)
    # Then line numbers count the blank line and values are typed
    assert (line1, line3) == (1, 3)
    assert isinstance(block, ChangeBlockStatus) and block.active is True
    assert isinstance(service, ChangeServiceStatus) and service.active is False


def test_a_quoted_multiline_reason_keeps_later_line_numbers_right(tmp_path: Path) -> None:
    # Given a row whose quoted field spans two lines, then a bad row
    path = write(
        tmp_path, HEADER + 'block,telco,5,1,,true,"two\nlines",,\n' + "block,x/y,5,1,,1,,,\n"
    )
    # When it is read
    [(first, reason_error), (second, org_error)] = rows(path)
    # Then the rows start on lines 2 and 4 (the reason's newline is refused by the contract)
    assert (first, second) == (2, 4)
    assert str(reason_error).startswith("line 2: reason: must not contain control")
    assert str(org_error).startswith("line 4: org_id: String should match pattern")


# --- bad rows -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("block,telco,5,3,,true,,,", "block_id: Input should be less than or equal to 2"),
        ("block,telco,0,1,,true,,,", "subscription_id: Input should be greater than or equal to 1"),
        ("block,telco,abc,1,,true,,,", "subscription_id: Input should be a valid integer"),
        ("block,telco,-5,1,,true,,,", "subscription_id: Input should be greater than or equal"),
        ("block,te/lco,5,1,,true,,,", "org_id: String should match pattern"),
        ("block,telco,5,1,,maybe,,,", "active: Input should be a valid boolean"),
        ("block,telco,5,1,,,,,", "active: Field required"),
        ("block,telco,5,,,true,,,", "block_id: Field required"),
        ("service,telco,5,,,true,,,", "service_id: Field required"),
        ("service,telco,5,1,3,true,,,", "block_id: Extra inputs are not permitted"),
        ("service,telco,5,,3,true,stolen,,", "reason: Extra inputs are not permitted"),
        ("barring,telco,5,1,,true,,,", "type: expected block, service, ChangeBlockStatus or"),
        (",telco,5,1,,true,,,", "type: Field required"),
        (
            "block,telco,5,1,,true,,urgent,",
            "priority: batches go on the bulk lane only, got 'urgent'",
        ),
        ("block,telco,5,1,,true,,,a b", "command_id: String should match pattern"),
        ("block,telco,5,1,,true", "expected 9 fields as in the header, got 6"),
    ],
)
def test_a_bad_row_is_named_with_its_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    # Given a valid row, then a bad one on line 3
    path = write(tmp_path, HEADER + GOOD_BLOCK + row + "\n")
    # When the file is read
    [(_, first), (line, error)] = rows(path)
    # Then the good row is a command and the bad one an error naming line 3 and the field
    assert isinstance(first, ChangeBlockStatus)
    assert line == 3
    assert isinstance(error, RowError)
    assert str(error).startswith(f"line 3: {reason}"), str(error)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not JSON: Expecting value"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"type": "block", "colour": "red"}', "unknown field(s) colour; expected: type,"),
        (
            '{"type": "block", "org_id": "telco", "subscription_id": 5.0, "block_id": 1,'
            ' "active": true}',
            "subscription_id: Input should be a valid integer",
        ),
    ],
)
def test_a_bad_jsonl_row_is_named_with_its_line(tmp_path: Path, line: str, reason: str) -> None:
    # Given a JSON Lines file whose second line is bad
    good = (
        '{"type": "block", "org_id": "telco", "subscription_id": 5, "block_id": 1, "active": true}'
    )
    path = write(tmp_path, f"{good}\n{line}\n", name="batch.jsonl")
    # When it is read / Then line 2 is named with the reason
    [message] = errors(path)
    assert message.startswith(f"line 2: {reason}"), message


def test_check_counts_every_bad_row_keeps_some_and_shows_all(tmp_path: Path) -> None:
    # Given 10 rows of which rows on lines 3, 5, 7, 9 and 11 are bad
    body = "".join(GOOD_BLOCK if n % 2 == 0 else "block,telco,5,9,,true,,,\n" for n in range(10))
    path = write(tmp_path, HEADER + body)
    seen: list[RowError] = []
    # When the file is checked, keeping at most 2 errors
    result = check(path, on_invalid=seen.append, max_kept=2)
    # Then all are counted and passed on, 2 kept
    assert (result.rows, result.invalid, result.valid) == (10, 5, 5)
    assert [e.line for e in seen] == [3, 5, 7, 9, 11]
    assert [e.line for e in result.errors] == [3, 5]


# --- files that cannot be used --------------------------------------------------------


def test_a_non_utf8_file_names_the_line_and_byte(tmp_path: Path) -> None:
    # Given a Latin-1 file whose third line has an "é" (0xe9) at byte 90 of the file
    path = write(
        tmp_path, (HEADER + GOOD_BLOCK + "block,telco,5,1,,true,café,,\n").encode("latin-1")
    )
    offset = path.read_bytes().index(b"\xe9")
    # When it is read
    with pytest.raises(BatchFileError) as raised:
        rows(path)
    # Then one line names the file, the line, the byte offset and value
    message = str(raised.value)
    assert message == f"batch.csv is not UTF-8: line 3, byte {offset} (0xe9); save it as UTF-8"


def test_a_utf16_file_is_recognised(tmp_path: Path) -> None:
    # Given a CSV saved as UTF-16 (with its BOM)
    path = write(tmp_path, (HEADER + GOOD_BLOCK).encode("utf-16"))
    # When it is read / Then the error says what it looks like
    with pytest.raises(
        BatchFileError, match=r"is not UTF-8 \(it looks like UTF-16\): line 1, byte"
    ):
        rows(path)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n", b" , ,\n"])
def test_an_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    # Given an empty file (or only a BOM, blank lines, empty cells)
    path = write(tmp_path, content)
    # When it is checked / Then it is refused, saying it is empty and what is expected
    with pytest.raises(BatchFileError, match=r"^batch.csv is empty: expected a header line"):
        check(path)


def test_a_header_without_rows_is_refused(tmp_path: Path) -> None:
    # Given only a header
    path = write(tmp_path, HEADER)
    # When it is checked / Then it says there is nothing to enqueue
    with pytest.raises(BatchFileError, match=r"^batch\.csv has no rows: nothing to enqueue$"):
        check(path)


def test_an_empty_jsonl_file_is_refused(tmp_path: Path) -> None:
    # Given a JSON Lines file with blank lines only
    path = write(tmp_path, "\n  \n", name="batch.jsonl")
    # When it is checked / Then it has no rows
    with pytest.raises(BatchFileError, match="has no rows"):
        check(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("block,telco,5,1,,true\n", "line 1 is not a header (no known column name); expected"),
        (
            "type,org_id,subscription_id,active,colour,size\n",
            "line 1: unknown column(s) colour, size",
        ),
        ("type,org_id,subscription_id,active,type\n", "line 1: duplicated column(s) type"),
        ("type,org_id,block_id\n", "line 1: the header lacks column(s) subscription_id, active"),
    ],
)
def test_a_bad_header_is_refused(tmp_path: Path, header: str, message: str) -> None:
    # Given a file whose header is missing, unknown, duplicated or incomplete
    path = write(tmp_path, header + GOOD_BLOCK)
    # When it is read / Then the error names the columns
    with pytest.raises(BatchFileError) as raised:
        rows(path)
    assert str(raised.value).startswith(message)


def test_malformed_csv_is_refused_with_its_line(tmp_path: Path) -> None:
    # Given a quoted field with text after its closing quote
    path = write(tmp_path, HEADER + GOOD_BLOCK + 'block,telco,5,1,,true,"ab"c,,\n')
    # When it is read / Then the error is about line 3
    with pytest.raises(BatchFileError, match=r"^line 3: malformed CSV: "):
        rows(path)


def test_a_source_is_read_once(tmp_path: Path) -> None:
    # Given a source already read
    source = BatchSource(write(tmp_path, HEADER + GOOD_BLOCK))
    list(source.records())
    # When it is read again / Then it refuses (its digest would cover two reads)
    with pytest.raises(RuntimeError, match="read once"):
        list(source.records())


# --- ids and order ------------------------------------------------------------------


def test_the_batch_id_is_the_files_hash_so_a_rerun_keeps_every_id(tmp_path: Path) -> None:
    # Given a file, checked twice, and the same file with one more row
    first = write(tmp_path, HEADER + GOOD_BLOCK + GOOD_SERVICE)
    edited = write(tmp_path, HEADER + GOOD_BLOCK + GOOD_SERVICE + GOOD_BLOCK, name="b2.csv")
    # When each is checked
    once, twice, other = check(first), check(first), check(edited)
    # Then the same file has the same 16-hex batch id, an edited one another
    assert once.batch_id == twice.batch_id
    assert len(once.batch_id) == 16
    assert int(once.batch_id, 16) >= 0
    assert other.batch_id != once.batch_id


def test_rows_without_a_command_id_get_one_from_the_batch_and_line(tmp_path: Path) -> None:
    # Given a row without and a row with a command_id
    path = write(tmp_path, HEADER + GOOD_BLOCK + "block,telco,6,1,,true,,,my-own-id\n")
    # When it is read with batch id "feed"
    generated, given = commands(path, batch_id="feed")
    # Then the first is batch-feed-<line, 9 digits>, the second keeps its own
    assert generated.command_id == "batch-feed-000000002"
    assert given.command_id == "my-own-id"


def test_generated_ids_sort_in_file_order() -> None:
    # Given generated ids for lines 9, 10 and 100000 (same issued_at for the whole batch)
    ids = [generated_command_id("abc", line) for line in (9, 10, 100_000)]
    # Then the contract's tie-break (the command_id) keeps the file's order on a target
    assert ids == sorted(ids)


def test_a_batch_shares_one_issued_at_and_its_source(tmp_path: Path) -> None:
    # Given two rows without issued_at
    path = write(tmp_path, HEADER + GOOD_BLOCK + GOOD_SERVICE)
    # When read / Then both carry the builder's issued_at and source
    builder = RowBuilder(batch_id="x", source="batch:dunning")
    found = [c for _, c in BatchSource(path).rows(builder) if not isinstance(c, RowError)]
    assert len(found) == 2
    assert {c.issued_at for c in found} == {builder.issued_at}
    assert {c.source for c in found} == {"batch:dunning"}


def test_commands_are_what_the_worker_accepts(tmp_path: Path) -> None:
    # Given the example file
    # When each command is dumped as it travels and parsed as the worker does
    for command in commands(EXAMPLES / "batch.csv"):
        wire = command.model_dump(mode="json")
        # Then the worker reads back the same command
        assert parse_command(wire) == command


# --- formats and chunks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.csv", "{", BatchFormat.CSV),
        ("a.JSONL", "type", BatchFormat.JSONL),
        ("a.ndjson", "", BatchFormat.JSONL),
        ("a.txt", '\ufeff  {"type": "block"}', BatchFormat.JSONL),
        ("a.txt", "type,org_id", BatchFormat.CSV),
    ],
)
def test_format_by_extension_else_by_content(
    tmp_path: Path, name: str, content: str, expected: BatchFormat
) -> None:
    # Given a file / When its format is detected / Then extension wins, else content
    assert detect_format(write(tmp_path, content, name=name)) is expected


def test_chunked_groups_lazily_and_keeps_order() -> None:
    # Given an endless stream / When chunked by 3 / Then the first chunks come in order
    chunks = chunked(itertools.count(), 3)
    assert [next(chunks), next(chunks)] == [[0, 1, 2], [3, 4, 5]]
    # And a short last chunk is kept, and size 0 is refused
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="at least 1"):
        list(chunked(range(3), 0))


def test_every_column_is_documented_in_the_readme_section_of_the_help() -> None:
    # Given the CLI's epilog (the help text users read)
    # Then it names every column but schema_version (which JSON Lines dumps may carry)
    for column in COLUMNS:
        if column != "schema_version":
            assert column in BATCH_EPILOG


# --- a million rows, streamed -------------------------------------------------------

_STREAM_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from producers.batch import BatchSource, RowBuilder, check_file, chunked

    def both_passes(path):
        check = check_file(BatchSource(path), builder=RowBuilder(batch_id="0", source="t"))
        builder = RowBuilder(batch_id=check.batch_id, source="t")
        chunks = sum(1 for _ in chunked(BatchSource(path).rows(builder), 100))
        return check.valid, chunks

    def peak_kb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    both_passes(Path(sys.argv[1]))  # warm-up: imports, pydantic, caches
    before = peak_kb()
    valid, chunks = both_passes(Path(sys.argv[2]))
    print(json.dumps({"growth_kb": peak_kb() - before, "valid": valid, "chunks": chunks}))
    """
)


def test_a_million_rows_are_validated_and_chunked_in_flat_memory(tmp_path: Path) -> None:
    # Given a 1,000,000-row CSV (33 MB) and a 1,000-row warm-up file
    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    for path, count in ((big, 1_000_000), (small, 1_000)):
        with path.open("w") as handle:
            handle.write("type,org_id,subscription_id,block_id,service_id,active,reason\n")
            handle.writelines(f"block,telco,{n},1,,true,dunning\n" for n in range(1, count + 1))
    # When a fresh process validates it and chunks it (both passes), measuring its peak
    # RSS (tracemalloc would make this five times slower)
    probe = subprocess.run(
        [sys.executable, "-c", _STREAM_PROBE, str(small), str(big)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    result = json.loads(probe.stdout)
    # Then every row was seen, and memory grew by far less than the file's size
    # (holding the file would add 33 MB; holding its commands, gigabytes)
    assert (result["valid"], result["chunks"]) == (1_000_000, 10_000)
    assert result["growth_kb"] < 16_000, result
