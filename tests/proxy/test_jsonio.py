"""The hot path's JSON: orjson's speed, the standard library's answers."""

import json

import pytest

from tokenskip.proxy import jsonio

SAME = [
    b'{"model": "m", "messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00"}]}',
    b'{"a": 1, "a": 2}',  # the last key wins, as in json
    b'{"seed": 123456789012345678901234567890}',  # beyond 64 bits: an int, not a float
    b'{"temperature": NaN}',  # json takes NaN; orjson refuses it
    b'{"x": 1e400}',  # out of a double's range: inf, as json reads it
    '{"a": 1}'.encode("utf-16"),  # json detects UTF-16; orjson refuses it
    b'{"lone": "\\ud800"}',  # parsed by json; read_body then refuses it by name
]


@pytest.mark.parametrize("raw", SAME)
def test_a_body_parses_to_what_json_gives(raw):
    got, clean = jsonio.loads(raw)
    want = json.loads(raw)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert type(got.get("seed", 0)) is type(want.get("seed", 0))
    if "lone" in want:
        assert not clean  # so the surrogate check still runs


@pytest.mark.parametrize("raw", [b"{", b'{"a": }', b"\xff\xfe\x00", b""])
def test_a_bad_body_fails_as_json_fails(raw):
    with pytest.raises(ValueError) as ours:
        jsonio.loads(raw)
    with pytest.raises(ValueError) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value)


def test_dumps_writes_what_orjson_cannot_through_json():
    assert json.loads(jsonio.dumps({"b": 1, "a": "é"}, sort_keys=True)) == {"a": "é", "b": 1}
    assert jsonio.dumps({"b": 1, "a": 2}, sort_keys=True) == b'{"a":2,"b":1}'
    assert json.loads(jsonio.dumps({"seed": 10**30})) == {"seed": 10**30}
