"""Prompt files as users write them, and as they break (issue 17, finding 8): input that
is right is read, input that is wrong gets one PromptFileError naming the file (and
row or column), never another exception or junk values.

1. A corpus of hand-made cases, each with what must happen.
2. Seeded random mutations of valid JSONL, JSON, CSV and TSV files: whatever comes out
   is either a clean table or a PromptFileError.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_refused, circuitray

from circuitray.errors import PromptFileError
from circuitray.prompts.files import read_prompts

GOOD = {
    "bom.jsonl": b'\xef\xbb\xbf{"prompt_id":"a","prompt":"x"}\n',
    "bom.csv": b"\xef\xbb\xbfprompt_id,prompt\na,x\n",
    "array.json": b'[{"prompt_id":"a","prompt":"x"},{"prompt_id":"b","prompt":"y"}]',
    "lines.json": b'{"prompt_id":"a","prompt":"x"}\n',
    "crlf.jsonl": b'{"prompt_id":"a","prompt":"x"}\r\n{"prompt_id":"b","prompt":"y"}\r\n',
    "crlf.csv": b"prompt_id,prompt\r\na,x\r\nb,y\r\n",
    "multiline.csv": b'prompt_id,prompt\na,"line one\nline two"\n',
    "quoted.csv": b'"prompt_id","prompt"\n"a","say ""hi"", then"\n',
    "spaced_header.csv": b"prompt_id, prompt\na,x\n",
    "tabs.tsv": b"prompt_id\tprompt\na\tx, with a comma\n",
    "int_ids.jsonl": b'{"prompt_id":7,"prompt":"x"}\n{"prompt_id":8,"prompt":"y"}\n',
    "mixed_ids.jsonl": b'{"prompt_id":7,"prompt":"x"}\n{"prompt_id":"a7","prompt":"y"}\n',
    "mixed_meta.jsonl": (
        b'{"prompt_id":"a","prompt":"x","m":1}\n{"prompt_id":"b","prompt":"y","m":"z"}\n'
    ),
    "unicode.jsonl": '{"prompt_id":"ü","prompt":"日本語 ok"}\n'.encode(),
    "blank_lines.jsonl": b'\n{"prompt_id":"a","prompt":"x"}\n\n',
}

BAD = {
    "nan_prompt.jsonl": (b'{"prompt_id":"a","prompt":NaN}\n', "'prompt' must be text"),
    "number_prompt.jsonl": (b'{"prompt_id":"a","prompt":12}\n', "'prompt' must be text"),
    "mixed_prompt.jsonl": (
        b'{"prompt_id":"a","prompt":"x"}\n{"prompt_id":"b","prompt":3}\n',
        "column 'prompt'",
    ),
    "bool_id.jsonl": (b'{"prompt_id":true,"prompt":"x"}\n', "'prompt_id' must be text"),
    "float_id.jsonl": (b'{"prompt_id":1.5,"prompt":"x"}\n', "'prompt_id' must be text"),
    "nested.jsonl": (b'{"prompt_id":"a","prompt":{"t":1}}\n', "'prompt' must be text"),
    "list.jsonl": (b'{"prompt_id":"a","prompt":["x"]}\n', "'prompt' must be text"),
    "dup_header.csv": (b"prompt_id,prompt,prompt\na,x,y\n", "'prompt' appears more than once"),
    "dup_after_strip.csv": (b"prompt_id,prompt, prompt\na,x,y\n", "appears more than once"),
    "ragged.csv": (b"prompt_id,prompt\na,x,extra\n", "cannot read as csv"),
    "latin1.csv": ("prompt_id,prompt\na,caf\xe9\n".encode("latin-1"), "cannot read as csv"),
    "latin1.jsonl": ('{"prompt_id":"a","prompt":"caf\xe9"}\n'.encode("latin-1"), "jsonl"),
    "not_object.jsonl": (b"[1, 2]\n", "line 1: expected a JSON object"),
    "array_of_numbers.json": (b"[1, 2]", "row 1: expected a JSON object"),
    "broken.json": (b'[{"prompt_id": "a",', "invalid JSON"),
    "empty.jsonl": (b"", "no prompts in file"),
    "header_only.csv": (b"prompt_id,prompt\n", "no prompts"),
    "no_prompt.csv": (b"prompt_id,text\na,x\n", "missing required column 'prompt'"),
    "blank_prompt.jsonl": (b'{"prompt_id":"a","prompt":"  "}\n', "row 1 (prompt_id a)"),
    "dup_id.jsonl": (
        b'{"prompt_id":"a","prompt":"x"}\n{"prompt_id":"a","prompt":"y"}\n',
        "row 2: duplicate prompt_id 'a'",
    ),
    "zero.parquet": (b"", "cannot read as parquet"),
    "garbage.parquet": (b"PAR1 not really", "cannot read as parquet"),
    "binary.jsonl": (b"\x00\x01\x02\xff", "jsonl"),
    "prompts.txt": (b"prompt_id,prompt\na,x\n", "unknown prompt file type"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_right_input_is_read(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(GOOD[name])
    table = read_prompts(path)
    assert table.num_rows >= 1
    for pid, text in zip(table["prompt_id"].to_pylist(), table["prompt"].to_pylist(), strict=True):
        assert isinstance(pid, str) and pid.strip() and isinstance(text, str) and text.strip()


def test_read_values_are_the_files(tmp_path):
    cases = {
        "multiline.csv": ["line one\nline two"],
        "quoted.csv": ['say "hi", then'],
        "tabs.tsv": ["x, with a comma"],
        "array.json": ["x", "y"],
    }
    for name, prompts in cases.items():
        (tmp_path / name).write_bytes(GOOD[name])
        assert read_prompts(tmp_path / name)["prompt"].to_pylist() == prompts, name
    (tmp_path / "ids.jsonl").write_bytes(GOOD["mixed_ids.jsonl"])
    assert read_prompts(tmp_path / "ids.jsonl")["prompt_id"].to_pylist() == ["7", "a7"]
    (tmp_path / "meta.jsonl").write_bytes(GOOD["mixed_meta.jsonl"])
    assert read_prompts(tmp_path / "meta.jsonl")["m"].to_pylist() == ["1", "z"]


@pytest.mark.parametrize("name", sorted(BAD))
def test_wrong_input_gets_one_named_error(tmp_path, name):
    data, needle = BAD[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(PromptFileError) as e:
        read_prompts(path)
    assert str(e.value).startswith(str(path)) and needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("columns", "needle"),
    [
        ({"prompt_id": ["a"], "prompt": [5]}, "'prompt' must be text"),
        ({"prompt_id": [1.5], "prompt": ["x"]}, "'prompt_id' must be text"),
        ({"prompt_id": ["a"], "prompt": [[1]]}, "'prompt' must be text"),
        ({"prompt_id": ["a"], "prompt": [b"\xff\xfe"]}, "'prompt' must be text"),
    ],
)
def test_parquet_columns_of_the_wrong_type(tmp_path, columns, needle):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(PromptFileError, match=needle):
        read_prompts(path)


def test_parquet_text_in_other_encodings_of_arrow_is_read(tmp_path):
    path = tmp_path / "p.parquet"
    ids = pa.array(["a", "b"]).dictionary_encode()
    pq.write_table(
        pa.table({"prompt_id": ids, "prompt": pa.array(["x", "y"], pa.large_string())}), path
    )
    assert read_prompts(path)["prompt"].to_pylist() == ["x", "y"]


def test_parquet_string_views_are_read(tmp_path):
    """Polars and DuckDB write string columns as Arrow string views; such a file was
    refused as "not text"."""
    path = tmp_path / "p.parquet"
    table = pa.table(
        {
            "prompt_id": pa.array(["a", "b"], pa.string_view()),
            "prompt": pa.array([b"x", b"y"], pa.binary_view()),
        }
    )
    pq.write_table(table, path)
    assert pq.read_schema(path).field("prompt_id").type == pa.string_view()
    assert read_prompts(path)["prompt"].to_pylist() == ["x", "y"]


SEEDS = {
    "s.jsonl": GOOD["crlf.jsonl"] + b'{"prompt_id":"c","prompt":"z","target":"w"}\n',
    "s.json": GOOD["array.json"],
    "s.csv": b'prompt_id,prompt,target\na,"x, y",z\nb,"q ""r""",s\n',
    "s.tsv": GOOD["tabs.tsv"],
}
NOISE = [b'"', b",", b"\t", b"\n", b"\r", b"{", b"}", b"[", b"]", b":", b"\\", b"\x00",
         b"\xff", b"\xef\xbb\xbf", b"NaN", b"1e999", b"null", b"true", b" ", b"\xc3"]  # fmt: skip


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        op = rng.random()
        if op < 0.4:
            out[at:at] = rng.choice(NOISE)
        elif op < 0.7 and out:
            del out[at : at + rng.randint(1, 3)]
        elif out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
    return bytes(out)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_files_are_read_cleanly_or_refused_in_one_line(tmp_path, name):
    rng = random.Random(f"fuzz-{name}")
    outcomes = {"read": 0, "refused": 0}
    for i in range(150):
        path = tmp_path / f"{i}-{name}"
        path.write_bytes(_mutate(SEEDS[name], rng))
        try:
            table = read_prompts(path)
        except PromptFileError as e:
            message = str(e)
            assert message.startswith(str(path)) and "\n" not in message, message
            outcomes["refused"] += 1
            continue
        ids, prompts = table["prompt_id"].to_pylist(), table["prompt"].to_pylist()
        assert len(set(ids)) == len(ids)
        for pid, text in zip(ids, prompts, strict=True):
            assert isinstance(pid, str) and pid.strip(), (path.read_bytes(), pid)
            assert isinstance(text, str) and text.strip(), (path.read_bytes(), text)
        json.dumps(table.to_pylist())  # every value is plain data
        outcomes["read"] += 1
    assert outcomes["read"] and outcomes["refused"], outcomes  # the fuzz reaches both


@pytest.mark.parametrize("name", ["nan_prompt.jsonl", "dup_header.csv", "float_id.jsonl"])
def test_the_cli_refuses_them_in_one_line(tmp_path, name):
    data, needle = BAD[name]
    path = tmp_path / name
    path.write_bytes(data)
    p = circuitray("run", path, "--out", tmp_path / "run", "--model", "tiny")
    assert_refused(p, str(path), needle)
    assert not (tmp_path / "run").exists()
