import pytest

from sglang_mint.catalog import validate_adapter_id
from sglang_mint.errors import InvalidAdapterId


@pytest.mark.parametrize("good", ["a", "A9", "acme/support-bot", "acme/team.a/v2_final", "x" * 128, "a.b", "...a", "-"])
def test_valid_ids_pass_unchanged(good):
    assert validate_adapter_id(good) == good


@pytest.mark.parametrize(
    "bad, words",
    [
        ("", "empty"),
        ("x" * 129, "129 characters"),
        ("../x", "'..' segment"),
        ("a/../b", "'..' segment"),
        ("a/./b", "'.' segment"),
        (".", "'.' segment"),
        ("/etc/passwd", "starts with '/'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("a\n", "control character"),
        ("a\x7f", "control character"),
        ("caf\u00e9", "non-ASCII"),
        ("\u0430dapter", "U+0430"),  # Cyrillic a, looks like Latin a
        ("a b", "' '"),
        ("a\\b", "'\\\\'"),
        ("a:b", "':'"),
    ],
)
def test_invalid_ids_name_the_problem(bad, words):
    with pytest.raises(InvalidAdapterId) as info:
        validate_adapter_id(bad)
    assert words in str(info.value)


def test_non_string_is_refused():
    with pytest.raises(InvalidAdapterId, match="must be a string"):
        validate_adapter_id(b"abc")
