"""Reading and validating user prompt files (Parquet, JSONL, CSV)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitray.errors import PromptFileError
from circuitray.prompts.files import PROMPT_SCHEMA, read_prompts, write_prompts
from circuitray.prompts.ws2 import generate_ws2

BASE = [f.name for f in PROMPT_SCHEMA]


def _check_minimal(t: pa.Table, extra: dict[str, list]):
    assert t.column_names[:4] == BASE
    assert t.schema.field("prompt_id").type == pa.string()
    assert t.schema.field("prompt").type == pa.string()
    assert t["prompt_id"].to_pylist() == ["p1", "p2"]
    assert t["prompt"].to_pylist() == ["not tall but", "the word zorp means"]
    # Optional columns exist and are null when the file has none.
    assert t["constraint_type"].null_count == 2
    assert t["target"].null_count == 2
    for name, values in extra.items():
        assert t[name].to_pylist() == values


def test_parquet_minimal_columns_and_extra_kept(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt_id": ["p1", "p2"],
                "prompt": ["not tall but", "the word zorp means"],
                "source": ["a", "b"],
                "weight": [1.5, 2.0],
            }
        ),
        path,
    )
    t = read_prompts(path)
    _check_minimal(t, {"source": ["a", "b"], "weight": [1.5, 2.0]})
    assert t.column_names == [*BASE, "source", "weight"]


def test_jsonl_minimal_columns_and_extra_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt_id": "p1", "prompt": "not tall but", "note": "x"})
        + "\n\n"  # blank lines are skipped
        + json.dumps({"prompt_id": "p2", "prompt": "the word zorp means", "note": "y"})
        + "\n"
    )
    t = read_prompts(path)
    _check_minimal(t, {"note": ["x", "y"]})


def test_csv_minimal_columns_extra_kept_and_ids_stay_strings(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt_id,prompt,code\n007,not tall but,0012\n010,"the word zorp means",42\n')
    t = read_prompts(path)
    assert t.column_names == [*BASE, "code"]
    assert t["prompt_id"].to_pylist() == ["007", "010"]
    assert t["prompt"].to_pylist() == ["not tall but", "the word zorp means"]
    # Every CSV column is text: leading zeros survive in extra columns too.
    assert t["code"].to_pylist() == ["0012", "42"]
    assert t["constraint_type"].null_count == 2


def test_tsv(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("prompt_id\tprompt\n001\tnot tall, but\n")
    t = read_prompts(path)
    assert t["prompt_id"].to_pylist() == ["001"]
    assert t["prompt"].to_pylist() == ["not tall, but"]


def test_csv_quoted_header_ids_stay_strings(tmp_path):
    path = tmp_path / "q.csv"
    write_prompts([{"prompt_id": "007", "prompt": "not tall but"}], path)
    assert read_prompts(path)["prompt_id"].to_pylist() == ["007"]


def test_jsonl_columns_of_later_rows_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt_id": "a", "prompt": "not tall but"})
        + "\n"
        + json.dumps({"prompt_id": "b", "prompt": "not wet but", "target": "dry"})
        + "\n"
    )
    t = read_prompts(path)
    assert t["target"].to_pylist() == [None, "dry"]


def test_integer_ids_become_strings(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt_id": [1, 2], "prompt": ["not tall but", "not wet but"]}), path)
    assert read_prompts(path)["prompt_id"].to_pylist() == ["1", "2"]


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_ws2_roundtrip(tmp_path, ext):
    rows = generate_ws2(n=12, seed=1)
    path = write_prompts(rows, tmp_path / f"ws2.{ext}")
    assert not list(tmp_path.glob(".*.tmp"))
    t = read_prompts(path)
    assert t.num_rows == 12
    for key in ("prompt_id", "prompt", "constraint_type", "target", "split", "cue"):
        assert t[key].to_pylist() == [r[key] for r in rows]
    assert t["candidates"].to_pylist() == [r["candidates"] for r in rows]


@pytest.mark.parametrize("ext", ["parquet", "jsonl", "csv"])
def test_duplicate_prompt_id(tmp_path, ext):
    rows = [
        {"prompt_id": "a", "prompt": "not tall but"},
        {"prompt_id": "b", "prompt": "not wet but"},
        {"prompt_id": "a", "prompt": "not loud but"},
    ]
    path = write_prompts(rows, tmp_path / f"dup.{ext}")
    with pytest.raises(PromptFileError, match=r"row 3: duplicate prompt_id 'a' \(first at row 1\)"):
        read_prompts(path)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        read_prompts(tmp_path / "nope.parquet")


def test_directory(tmp_path):
    with pytest.raises(PromptFileError, match="is a directory"):
        read_prompts(tmp_path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    with pytest.raises(PromptFileError, match="unknown prompt file type"):
        read_prompts(path)


def test_missing_prompt_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt_id,text\na,not tall but\n")
    message = r"missing required column 'prompt' \(found: prompt_id, text\)"
    with pytest.raises(PromptFileError, match=message):
        read_prompts(path)


@pytest.mark.parametrize(
    "line2, message",
    [
        ({"prompt_id": "b", "prompt": "   "}, r"row 2 \(prompt_id b\): column 'prompt' is empty"),
        ({"prompt_id": "b", "prompt": None}, r"row 2 \(prompt_id b\): column 'prompt' is empty"),
        ({"prompt_id": "", "prompt": "x"}, r"row 2: column 'prompt_id' is empty"),
    ],
)
def test_empty_values_name_the_row(tmp_path, line2, message):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt_id": "a", "prompt": "not tall but"}) + "\n" + json.dumps(line2) + "\n"
    )
    with pytest.raises(PromptFileError, match=message) as info:
        read_prompts(path)
    assert str(path) in str(info.value)


def test_invalid_jsonl_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt_id": "a", "prompt": "x"}\n{not json\n')
    with pytest.raises(PromptFileError, match="line 2: invalid JSON"):
        read_prompts(path)


def test_empty_files(tmp_path):
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text("\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompts(jsonl)
    csv = tmp_path / "e.csv"
    csv.write_text("prompt_id,prompt\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompts(csv)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(PromptFileError, match="cannot read as parquet"):
        read_prompts(path)


def test_messages_are_one_line(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1garbagePAR1")
    with pytest.raises(PromptFileError) as info:
        read_prompts(path)
    assert "\n" not in str(info.value)


STRAY = 'z1,the kite will glide so it moves\nz2,"the word blarf\nz3,the boat is not rich so it is\n'


@pytest.mark.parametrize(
    "body, message",
    [
        # The quote opened on line 3 runs to the end of the file: z3 is not a row.
        (STRAY, r"line 3: a quoted field opened here is never closed"),
        # ... or pairs with the next quoted value, swallowing z3 and leaving text after it.
        (
            STRAY + 'z4,"not tall, but"\n',
            r"line 3: a quoted field opened here closes on line 5 and is followed by text",
        ),
        # A quote left open on the file's last line.
        ('z1,not tall but\nz2,"not wet but', r"line 3: a quoted field opened here is never"),
    ],
    ids=["open-to-the-end", "pairs-with-a-later-quote", "open-on-the-last-line"],
)
@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_csv_stray_quote_names_the_line(tmp_path, body, message, ext):
    path = tmp_path / f"p.{ext}"
    text = "prompt_id,prompt\n" + body
    path.write_text(text.replace(",", "\t") if ext == "tsv" else text)
    with pytest.raises(PromptFileError, match=message) as info:
        read_prompts(path)
    assert str(info.value).startswith(f"{path}: line 3: ")
    assert "\n" not in str(info.value)


def test_csv_quoted_values_may_span_lines_and_hold_quotes(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        'prompt_id,prompt\r\nz1,"the word ""blarf""\r\nmeans, so"\r\nz2,the "kite" glides\r\n'
    )
    t = read_prompts(path)
    assert t["prompt_id"].to_pylist() == ["z1", "z2"]
    assert t["prompt"].to_pylist() == ['the word "blarf"\r\nmeans, so', 'the "kite" glides']
