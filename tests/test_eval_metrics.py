"""Every metric against hand-computed examples, including the official VQA normalisation quirks."""

import pytest

from eve_vlm.eval.metrics import (
    CONTRACTIONS, anls, exact_match, extract_choice, gold_letter, levenshtein, multiple_choice, normalize_answer,
    vqa_accuracy,
)


@pytest.mark.parametrize("raw, normalized", [
    ("Yes", "yes"),
    ("  Red.\n", "red"),  # case, whitespace, final period
    ("The TWO dogs", "2 dogs"),  # article removed, number word -> digit
    ("a banana", "banana"),
    ("an apple and the pear", "apple and pear"),
    ("none", "0"), ("Ten", "10"), ("eleven", "eleven"),  # only zero..ten (+ "none") are mapped
    ("dont", "don't"), ("isnt it", "isn't it"), ("couldnt've", "couldn't've"), ("couldn'tve", "couldn't've"),
    ("can't", "can't"),  # already contracted: unchanged ("'" is not punctuation here)
    ("black/white", "black white"),  # a mark between words becomes a space...
    ("black / white", "black white"),  # ...and is deleted when it touches a space
    ("yes, it is!", "yes it is"),
    ("1,000", "1000"),  # a comma inside a number deletes every mark of the answer
    ("3.5", "3.5"),  # a decimal point survives...
    ("end.", "end"),  # ...a period before a non-digit does not
    ("(B)", "b"), ("well-known", "well known"),
])
def test_vqa_normalization(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_contraction_table_is_derived_from_the_official_forms():
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["yall'll"] == "y'all'll" and CONTRACTIONS["twas"] == "'twas"
    assert "don't" not in CONTRACTIONS  # canonical forms map to nothing


def test_exact_match():
    rec = {"answers": ["two"]}
    assert exact_match("2", rec) == exact_match("Two.", rec) == exact_match("the two", rec) == 1.0
    assert exact_match("three", rec) == 0.0
    assert exact_match("circle", {"answers": ["rectangle", "circle"]}) == 1.0  # any reference
    assert exact_match("anything", {"answers": []}) == 0.0


def test_vqa_soft_accuracy_hand_computed():
    ten = ["red"] * 2 + ["dark red"] * 8
    # 2 "red": leaving one "red" out leaves 1 match (1/3) -> 2 subsets; leaving a "dark red" out leaves 2 (2/3) -> 8.
    assert vqa_accuracy("Red", {"answers": ten}) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("dark red", {"answers": ten}) == 1.0  # >= 3 matches in every subset
    three = ["cat", "cat", "cat"] + ["dog"] * 7
    # leaving a "cat" out leaves 2 matches (2/3, 3 subsets); leaving a "dog" out leaves 3 (1, 7 subsets).
    assert vqa_accuracy("a cat", {"answers": three}) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("bird", {"answers": three}) == 0.0
    assert vqa_accuracy("two", {"answers": ["2", "2", "3"]}) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    # a single reference: exact match
    assert vqa_accuracy("Yes.", {"answers": ["yes"]}) == 1.0 and vqa_accuracy("no", {"answers": ["yes"]}) == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2


def test_anls_threshold_and_best_reference():
    assert anls("Hello World", {"answers": ["hello  world "]}) == 1.0  # case and spacing ignored
    assert anls("helo", {"answers": ["hello"]}) == pytest.approx(1 - 1 / 5)
    # distance 2/4 = 0.5 is at the threshold: counts 0; 1/3 is below: counts 1 - 1/3
    assert anls("abxx", {"answers": ["abcd"]}) == 0.0
    assert anls("abx", {"answers": ["abc"]}) == pytest.approx(2 / 3)
    assert anls("abx", {"answers": ["zzz", "abc"]}) == pytest.approx(2 / 3)  # best reference
    assert anls("", {"answers": [""]}) == 1.0 and anls("x", {"answers": [""]}) == 0.0


CHOICES = ["cat", "dog", "dark red", "red"]


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("B: dog", "B"), ("(B) dog", "B"),
    ("B. dog", "B"), ("The answer is B.", "B"), ("the answer is (C)", "C"), ("Answer: D", "D"),
    ("dog", "B"), ("Dog.", "B"), ("It is a dog.", "B"),  # option text
    ("dark red", "C"), ("The box is red", "D"),
    ("The box is dark red", "C"),  # "red" inside the "dark red" mention does not count for D
    ("The answer is a dog", "B"),  # "a" is an article here, not option A
    ("a cat and a dog", None),  # two options mentioned: ambiguous
    ("E", None), ("The answer is E", None),  # not an option letter
    ("I don't know", None), ("", None),
])
def test_choice_extraction(reply, letter):
    assert extract_choice(reply, CHOICES) == letter


def test_gold_letter_forms_and_mcq_score():
    assert gold_letter({"choices": CHOICES, "answer": "b"}) == "B"
    assert gold_letter({"choices": CHOICES, "answer": 2}) == "C"
    assert gold_letter({"choices": CHOICES, "answer": "Dark red"}) == "C"
    assert gold_letter({"choices": CHOICES, "answer": "horse"}) is None
    rec = {"choices": CHOICES, "answer": "A"}
    assert multiple_choice("(A) cat", rec) == multiple_choice("cat", rec) == 1.0
    assert multiple_choice("B", rec) == 0.0
