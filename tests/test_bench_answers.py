"""The answers benchmark grades what is said, not how: numbers as digits or words,
spelled letters, possessives; a wrong sum that reuses the question's words fails."""

import pytest

from bench.answers import ITEMS, Item, grade, normalize, unspeakable


@pytest.mark.parametrize(
    ("said", "normalized"),
    [
        ("Ten plus five is fifteen.", "10 plus 5 is 15"),
        ("Ten plus five equals ten five.", "10 plus 5 equals 10 5"),
        ("One hundred and eighty minutes", "180 minutes"),
        ("Twenty-one", "21"),
        ("1,000 grams", "1000 grams"),
        ("It is 3.0 hours", "it is 3 hours"),
        ("C-A-T", "c a t"),
        ("Tom's name", "tom name"),
        ("five and six", "5 and 6"),
        ("Two thousand and twenty-six", "2026"),
    ],
)
def test_normalize(said: str, normalized: str) -> None:
    assert normalize(said) == normalized


def test_grade() -> None:
    sum_ = Item("arithmetic", ("What is ten plus five?",), ("15",))
    assert grade(sum_, "Ten plus five is fifteen.")
    assert grade(sum_, "It's 15.")
    assert not grade(sum_, "Ten plus five equals ten five.")
    brother = Item("follow-up", ("...", "What is my brother's name?"), ("tom",), ("maria",))
    assert grade(brother, "Your brother's name is Tom.")
    assert not grade(brother, "Tom and Maria.")
    gas = Item("facts", ("What gas do plants take in?",), ("carbon dioxide|co2",))
    assert grade(gas, "They take in CO2.")


def test_unspeakable() -> None:
    assert unspeakable("Paris is the capital of France, twenty-one years on.") == []
    marked = "Here:\n- one\n2. two **bold** `x` see https://example.org"
    assert unspeakable(marked) == ["*", "-", "2.", "`", "https://"]


def test_enough_questions() -> None:
    assert len(ITEMS) >= 60
    assert sum(len(item.lines) > 1 for item in ITEMS) >= 10
