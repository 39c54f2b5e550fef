"""Review 4: a bearer token that cannot travel in an HTTP header is refused at start, by the flag's name.

Before: a token file of two lines (a Secret made from a file with a trailing line, then edited), or with a
non-ASCII letter, was taken as it was: the receiver and the monitor then answered 401 to every caller (no header
can carry it) and the label CLI failed inside httpx ("UnicodeEncodeError: 'ascii' codec ..."); a token file that
is not UTF-8 gave Python's decode error, naming no flag.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kanari.webguard import bearer_token


@pytest.mark.parametrize("content", [b"abc\ndef", b"abc def", "t\u00f8ken".encode(), b"abc\x00def", b"\xff\xfe"])
def test_a_token_no_header_can_carry_is_refused_by_the_flags_name(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "t").write_bytes(content)
    with pytest.raises(ValueError, match=r"^--labels-token-file: ") as err:
        bearer_token("--labels-token-file", str(tmp_path / "t"), "KANARI_TEST_TOKEN")
    assert str(tmp_path) not in str(err.value)


def test_the_same_from_the_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANARI_TEST_TOKEN", "two words")
    with pytest.raises(ValueError, match=r"^KANARI_TEST_TOKEN: the token holds whitespace"):
        bearer_token("--token-file", None, "KANARI_TEST_TOKEN", required="never open")


def test_a_usual_token_still_reads(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  aZ09-._~+/=  \n")  # RFC 6750 b64token, with the file's padding around it
    assert bearer_token("--token-file", str(tmp_path / "t"), "KANARI_TEST_TOKEN") == "aZ09-._~+/="
