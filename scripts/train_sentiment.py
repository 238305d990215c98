"""Train the bundled text demo model, ``sentiment``, and export it as a TensorFlow SavedModel.

A synthetic task, so nothing is downloaded: sentences of 1 to 64 words drawn from a small
vocabulary (``VOCABULARY``: praise, blame and filler words); a sentence is positive when it has
more praise than blame words, negative when it has more blame (ties are left out). The model is a
small text classifier over variable-length token ids: an embedding, a width-3 convolution,
pooling over the real tokens only (id 0 is padding, and its embedding is zero, so padding a
sentence changes nothing), and a softmax over ``negative`` and ``positive``. It trains in
seconds on a 2-core CPU; the script prints its held-out accuracy and refuses to export below 95%.

It writes ``src/coserve/demo_models/sentiment/1/model.savedmodel`` (signature
``serving_default``: ``tokens`` INT32[-1, -1] -> ``probabilities`` FP32[-1, 2]) and the
vocabulary beside the tokenizer model (``sentiment_tokenizer/1/vocabulary.txt``; id = line
number, 0 padding, 1 unknown).

Needs TensorFlow (``pip install 'coserve[train]'``). Run it from the repository root:
``python scripts/train_sentiment.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent / "src" / "coserve" / "demo_models"
MIN_ACCURACY = 0.95
MAX_WORDS = 64

PRAISE = ["good", "great", "love", "excellent", "fine", "happy", "nice", "best", "enjoy", "wow"]
BLAME = ["bad", "awful", "hate", "terrible", "poor", "sad", "worst", "boring", "broken", "ugh"]
FILLER = [
    "the", "a", "movie", "food", "it", "was", "is", "and", "very", "so", "this", "that", "i",
    "we", "service", "day", "really", "quite", "place", "book",
]  # fmt: skip
VOCABULARY = ["<pad>", "<unk>", *PRAISE, *BLAME, *FILLER]


def sentences(count: int, seed: int) -> tuple[list[list[int]], np.ndarray]:
    """Token id lists and labels (1: positive), ties left out."""
    rng = np.random.default_rng(seed)
    ids = {word: i for i, word in enumerate(VOCABULARY)}
    praise, blame = [ids[w] for w in PRAISE], [ids[w] for w in BLAME]
    filler = [ids[w] for w in FILLER]
    texts: list[list[int]] = []
    labels: list[int] = []
    while len(texts) < count:
        length = int(rng.integers(1, MAX_WORDS + 1))
        good, bad = rng.integers(0, max(2, length // 3), size=2)
        if good == bad or good + bad > length:
            continue
        words = (
            list(rng.choice(praise, good))
            + list(rng.choice(blame, bad))
            + list(rng.choice(filler, length - good - bad))
        )
        rng.shuffle(words)
        texts.append([int(w) for w in words])
        labels.append(int(good > bad))
    return texts, np.array(labels)


def padded(texts: list[list[int]]) -> np.ndarray:
    """The id lists as one array, padded with 0 to the longest."""
    out = np.zeros((len(texts), max(len(t) for t in texts)), dtype=np.int32)
    for row, text in enumerate(texts):
        out[row, : len(text)] = text
    return out


def build() -> Any:
    """The classifier as a tf.Module: its weights, and ``classify(tokens)``."""
    import tensorflow as tf

    class Sentiment(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            init = tf.random.stateless_normal
            self.embedding = tf.Variable(init((len(VOCABULARY), 16), seed=(1, 2)) * 0.3)
            self.conv = tf.Variable(init((3, 16, 32), seed=(3, 4)) * 0.2)
            self.conv_bias = tf.Variable(tf.zeros(32))
            self.dense = tf.Variable(init((32, 2), seed=(5, 6)) * 0.2)
            self.dense_bias = tf.Variable(tf.zeros(2))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])  # type: ignore[misc]
        def serve(self, tokens: Any) -> dict[str, Any]:
            return {"probabilities": tf.nn.softmax(self.logits(tokens))}

        def logits(self, tokens: Any) -> Any:
            mask = tf.cast(tf.not_equal(tokens, 0), tf.float32)[..., None]
            # Padding (id 0) embeds to zeros and is left out of the pooling, so a sentence
            # padded to any length gets exactly its own answer.
            embedded = tf.gather(self.embedding, tokens) * mask
            features = tf.nn.relu(tf.nn.conv1d(embedded, self.conv, 1, "SAME") + self.conv_bias)
            pooled = tf.reduce_sum(features * mask, axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1), 1.0
            )
            return tf.matmul(pooled, self.dense) + self.dense_bias

    return Sentiment()


def train(model: Any, texts: list[list[int]], labels: np.ndarray, steps: int = 600) -> None:
    """Adam on batches of 64 sentences of mixed lengths."""
    import tensorflow as tf

    optimizer = tf.keras.optimizers.Adam(0.01)
    rng = np.random.default_rng(0)
    variables = model.trainable_variables
    for step in range(steps):
        picked = rng.choice(len(texts), 64, replace=False)
        tokens = tf.constant(padded([texts[i] for i in picked]))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels[picked], model.logits(tokens))
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        if step % 100 == 0:
            print(f"step {step}: loss {float(loss):.4f}")


def accuracy(model: Any, texts: list[list[int]], labels: np.ndarray) -> float:
    """The share of sentences classified right."""
    predicted = np.argmax(model.serve(padded(texts))["probabilities"].numpy(), axis=1)
    return float(np.mean(predicted == labels))


def main() -> None:
    """Train, check the accuracy, export the model and the vocabulary."""
    import tensorflow as tf

    texts, labels = sentences(6000, seed=0)
    test_texts, test_labels = sentences(1000, seed=1)
    model = build()
    train(model, texts, labels)
    score = accuracy(model, test_texts, test_labels)
    print(f"held-out accuracy: {score:.4f}")
    if score < MIN_ACCURACY:
        sys.exit(f"accuracy {score:.4f} is below {MIN_ACCURACY}; not exporting")
    target = REPOSITORY / "sentiment" / "1" / "model.savedmodel"
    shutil.rmtree(target, ignore_errors=True)
    tf.saved_model.save(model, str(target), signatures={"serving_default": model.serve})
    vocabulary = REPOSITORY / "sentiment_tokenizer" / "1" / "vocabulary.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n")
    print(f"exported to {target} and {vocabulary}")


if __name__ == "__main__":
    main()
