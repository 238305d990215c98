"""sentiment's tokenizer: words to ids of vocabulary.txt (0 padding, 1 unknown word)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_IDS = {
    word: index
    for index, word in enumerate(
        (Path(__file__).parent / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    )
    if word
}
_UNKNOWN = _IDS["<unk>"]
_MAX_WORDS = 64  # the classifier's longest bucket: longer sentences are cut there


def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row of token ids per sentence, padded with 0 to the request's longest."""
    texts = [
        t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in inputs["text"]
    ]
    rows = [
        [_IDS.get(word, _UNKNOWN) for word in re.findall(r"[a-z]+", text.lower())][:_MAX_WORDS]
        for text in texts
    ]
    tokens = np.zeros((len(rows), max(1, max(len(row) for row in rows))), dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return {"tokens": tokens}
