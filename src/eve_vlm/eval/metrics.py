"""Answer normalisation and the per-question metrics: exact match, VQAv2 accuracy, multiple
choice, ANLS. Each metric is `fn(prediction, record) -> float in [0, 1]`.

The normalisation reproduces the official VQAv2 evaluation (GT-Vision-Lab/VQA `vqaEval.py`,
`processPunctuation` + `processDigitArticle`), so numbers are comparable with published ones.
"""

import re

# Punctuation handled by processPunctuation; "." and "'" are not in it ("3.5", "don't" survive).
PUNCT = ";/[]\"{}()=+\\_-><@`,?!"
NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBERS["none"] = "0"  # the official map counts "none" as zero
ARTICLES = {"a", "an", "the"}
# Canonical contractions of the official table; it maps forms that lost apostrophes ("dont",
# "couldnt've") to these. We derive those keys instead of listing ~110 of them.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've "
    "needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's "
    "who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've "
    "you'll you're you've"
).split()


def _apostrophe_variants(word: str) -> set[str]:
    """Every spelling of `word` with some of its apostrophes dropped (the word itself included)."""
    head, sep, tail = word.partition("'")
    if not sep:
        return {word}
    return {head + s + rest for rest in _apostrophe_variants(tail) for s in ("'", "")}


CONTRACTIONS = {v: w for w in _CONTRACTED for v in _apostrophe_variants(w) if v != w}
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point)


def process_punctuation(text: str) -> str:
    # Official quirk, kept: a mark touching a space (or any "1,000" in the text) is deleted,
    # otherwise it becomes a space ("black/white" -> "black white").
    drop = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in PUNCT:
        out = out.replace(p, "" if drop or p + " " in text or " " + p in text else " ")
    return _PERIOD.sub("", out)


def process_digit_article(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """VQAv2 normalisation: "The TWO dogs." -> "2 dogs", "dont" -> "don't"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def references(record: dict) -> list[str]:
    return [str(a) for a in record.get("answers") or []]


def exact_match(prediction: str, record: dict) -> float:
    """1 if the normalised prediction equals any normalised reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in references(record)))


def vqa_accuracy(prediction: str, record: dict) -> float:
    """VQAv2 soft accuracy: for each reference, min(#other references equal to the prediction / 3, 1),
    averaged over the leave-one-out subsets (10 choose 9 for VQAv2's 10 answers). With a single
    reference the formula is undefined (no other answers): exact match is used instead.

    Both sides are normalised (the official script normalises references only when they
    disagree, because VQAv2's stored answers are already clean; ours may not be)."""
    refs = [normalize_answer(a) for a in references(record)]
    if len(refs) < 2:
        return exact_match(prediction, record)
    pred = normalize_answer(prediction)
    hits = sum(r == pred for r in refs)
    # Leaving out reference i: the matches among the others are hits - (refs[i] == pred).
    return sum(min(1.0, (hits - (r == pred)) / 3) for r in refs) / len(refs)


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, record: dict, threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity (DocVQA), per question: the best over references
    of 1 - lev(p, r) / max(|p|, |r|), counted as 0 when that distance is >= `threshold`.
    Case and surrounding / repeated whitespace are ignored, as in the DocVQA evaluation."""
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for ref in references(record):
        ref = " ".join(ref.lower().split())
        dist = levenshtein(pred, ref) / max(len(pred), len(ref), 1)
        best = max(best, 1 - dist if dist < threshold else 0.0)
    return best


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def gold_letter(record: dict) -> str | None:
    """The correct option of an MCQ record as a letter; `answer` may be a letter, an index or the option text."""
    choices, answer = record.get("choices") or [], record.get("answer")
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return LETTERS[answer]
    answer = str(answer).strip()
    if len(answer) == 1 and answer.upper() in LETTERS[:len(choices)]:
        return answer.upper()
    texts = [normalize_answer(str(c)) for c in choices]
    return LETTERS[texts.index(normalize_answer(answer))] if normalize_answer(answer) in texts else None


def extract_choice(prediction: str, choices: list) -> str | None:
    """The option letter a free-form reply picks, or None: "B", "b", "(B)", "B.", "B) cat", "The
    answer is B", "Answer: (B)", or the text of exactly one option ("cat", "It is a cat.")."""
    valid = LETTERS[:len(choices)]
    text = prediction.strip()
    patterns = (
        r"^\(?([A-Za-z])\)?[.:)]?$",  # the letter alone, any case
        r"^\(?([A-Z])[.:)]\s",  # "B. cat", "(B) cat"
        r"(?i:answer)(?: is|:)?\s*:?\s*\(?([A-Z])\b",  # "The answer is B", "Answer: (B)"; not "... is a cat"
    )
    for pattern in patterns:
        m = re.search(pattern, text)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    reply = f" {normalize_answer(text)} "
    options = [normalize_answer(str(c)) for c in choices]
    exact = [i for i, o in enumerate(options) if reply.strip() == o]
    if exact:
        return valid[exact[0]]
    # Options mentioned as whole words; one that is part of another mention ("red" inside "dark red") does not count.
    found = [o for o in options if o and f" {o} " in reply]
    found = [o for o in found if not any(o != other and f" {o} " in f" {other} " for other in found)]
    return valid[options.index(found[0])] if len(set(found)) == 1 else None


def multiple_choice(prediction: str, record: dict) -> float:
    gold = gold_letter(record)
    return float(gold is not None and extract_choice(prediction, record.get("choices") or []) == gold)


METRICS = {"exact_match": exact_match, "vqa_accuracy": vqa_accuracy, "anls": anls, "mcq": multiple_choice}
