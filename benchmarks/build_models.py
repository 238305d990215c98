"""Build the heavier benchmark models as TensorFlow SavedModels, with random weights.

Nothing is downloaded: every weight is drawn from a fixed seed, so the models cost what a trained
model of the same shape costs, and are rebuilt identically. Three models, each in
``benchmarks/.models/<name>/`` as a coserve model folder (``config.toml`` and
``1/model.savedmodel``):

- ``cnn28``: the 28x28 CNN of the peer study (research/peer-bench.md): ``image`` FP32
  ``[-1, 28, 28, 1]`` → Conv 32 (3x3) + max-pool → Conv 64 (3x3) + max-pool → Dense 128 →
  ``probabilities`` FP32 ``[-1, 10]``; 225,034 weights.
- ``mobilenet``: ``keras.applications.MobileNetV2(weights=None)`` at 224x224 (3.5 M weights),
  taking ``image`` UINT8 ``[-1, 224, 224, 3]`` (pixels, scaled to [-1, 1] inside the model, as
  an image client sends them) → ``probabilities`` FP32 ``[-1, 1000]``.
- ``encoder``: a text encoder: token and position embeddings (8,000 ids, width 128), four
  transformer layers (4 heads, feed-forward 512, pre-layer-norm), mean pooling over the real
  tokens → ``embedding`` FP32 ``[-1, 128]``; ``tokens`` INT32 ``[-1, -1]``, id 0 being
  padding. Padding is masked out of attention and pooling, so a row padded to any length gets
  its own answer (to float rounding). Its ``config.toml`` pads to buckets
  (:data:`TEXT_BUCKETS`).

Run ``python benchmarks/build_models.py`` (``--force`` rebuilds); ``benchmarks/heavy_models.py``
runs it when a model is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
MODELS = HERE / ".models"
VOCABULARY = 8000
WIDTH = 128
LAYERS = 4
HEADS = 4
FEED_FORWARD = 512
MAX_LENGTH = 256
TEXT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256)
NAMES = ("cnn28", "mobilenet", "encoder")

# The model folders' config.toml. MobileNetV2's batches stop paying beyond ~16 images on two
# cores (in process: 136 images/s at 8, 123 at 16, 98 at 32 and 64), so it is served by 16.
CONFIGS = {
    "cnn28": """\
platform = "tensorflow_savedmodel"

[batching]
max_batch_size = 64
max_queue_size = 4096

[threads]
intra_op = 1
inter_op = 1
""",
    "mobilenet": """\
platform = "tensorflow_savedmodel"

[batching]
max_batch_size = 16
max_queue_size = 4096
""",
    "encoder": f"""\
platform = "tensorflow_savedmodel"

[batching]
max_batch_size = 64
max_queue_size = 4096

[padding]
inputs = ["tokens"]
buckets = {list(TEXT_BUCKETS)}
value = 0
""",
}


def export_keras(model: Any, spec: Any, output: str, target: Path) -> None:
    """Export a Keras model's inference call as ``serving_default`` with named tensors."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {output: model(image, training=False)},
        input_signature=[spec],
    )
    archive.write_out(str(target), verbose=False)


def build_cnn28(target: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    spec = tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")
    export_keras(model, spec, "probabilities", target)


def build_mobilenet(target: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    pixels = keras.Input((224, 224, 3), dtype="uint8")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(keras.ops.cast(pixels, "float32"))
    network = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    model = keras.Model(pixels, network(scaled))
    spec = tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="image")
    export_keras(model, spec, "probabilities", target)


def build_encoder(target: Path) -> None:
    import tensorflow as tf

    class Encoder(tf.Module):  # type: ignore[misc]
        """Pre-layer-norm transformer layers over masked token ids, mean-pooled."""

        def __init__(self) -> None:
            super().__init__()
            seeds = iter(range(1, 1000))

            def weight(*shape: int, scale: float | None = None) -> Any:
                scale = scale if scale is not None else shape[0] ** -0.5
                noise = tf.random.stateless_normal(shape, seed=(next(seeds), 0))
                return tf.Variable(noise * scale)

            self.tokens = weight(VOCABULARY, WIDTH, scale=0.5)
            self.positions = weight(MAX_LENGTH, WIDTH, scale=0.1)
            self.layers = [
                {
                    "qkv": weight(WIDTH, 3 * WIDTH),
                    "out": weight(WIDTH, WIDTH),
                    "up": weight(WIDTH, FEED_FORWARD),
                    "up_bias": tf.Variable(tf.zeros(FEED_FORWARD)),
                    "down": weight(FEED_FORWARD, WIDTH),
                    "norm1": tf.Variable(tf.ones(WIDTH)),
                    "norm2": tf.Variable(tf.ones(WIDTH)),
                }
                for _ in range(LAYERS)
            ]
            self.final_norm = tf.Variable(tf.ones(WIDTH))

        @staticmethod
        def norm(x: Any, gain: Any) -> Any:
            mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(variance + 1e-6) * gain

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])  # type: ignore[misc]
        def serve(self, tokens: Any) -> dict[str, Any]:
            batch, length = tf.shape(tokens)[0], tf.shape(tokens)[1]
            real = tf.cast(tf.not_equal(tokens, 0), tf.float32)  # [B, L]
            x = tf.gather(self.tokens, tokens) + self.positions[:length]
            # Padded keys get -1e9 before the softmax: no real position attends to padding.
            bias = (1.0 - real)[:, None, None, :] * -1e9
            head = WIDTH // HEADS
            for layer in self.layers:
                h = self.norm(x, layer["norm1"])
                qkv = tf.reshape(h @ layer["qkv"], [batch, length, 3, HEADS, head])
                q, k, v = (tf.transpose(qkv[:, :, i], [0, 2, 1, 3]) for i in range(3))
                scores = tf.matmul(q, k, transpose_b=True) * head**-0.5 + bias
                attended = tf.matmul(tf.nn.softmax(scores), v)
                merged = tf.reshape(tf.transpose(attended, [0, 2, 1, 3]), [batch, length, WIDTH])
                x = x + merged @ layer["out"]
                h = self.norm(x, layer["norm2"])
                x = x + tf.nn.gelu(h @ layer["up"] + layer["up_bias"]) @ layer["down"]
            x = self.norm(x, self.final_norm)
            pooled = tf.reduce_sum(x * real[..., None], axis=1) / tf.maximum(
                tf.reduce_sum(real, axis=1, keepdims=True), 1.0
            )
            return {"embedding": pooled}

    encoder = Encoder()
    tf.saved_model.save(encoder, str(target), signatures={"serving_default": encoder.serve})


BUILDERS = {"cnn28": build_cnn28, "mobilenet": build_mobilenet, "encoder": build_encoder}


def model_folder(name: str) -> Path:
    """``benchmarks/.models/<name>``: a coserve model folder."""
    return MODELS / name


def saved_model(name: str) -> Path:
    """The SavedModel of a model."""
    return MODELS / name / "1" / "model.savedmodel"


def build(names: tuple[str, ...] = NAMES, *, force: bool = False) -> None:
    """Build the named models that are missing (all of them with ``force``)."""
    for name in names:
        folder = model_folder(name)
        target = saved_model(name)
        if force or not (target / "saved_model.pb").exists():
            print(f"building {name}...", file=sys.stderr, flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            target.parent.mkdir(parents=True)
            BUILDERS[name](target)
        (folder / "config.toml").write_text(CONFIGS[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild models already built")
    opts = parser.parse_args()
    unknown = set(opts.names) - set(NAMES)
    if unknown:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    build(tuple(opts.names) or NAMES, force=opts.force)
    print(f"models in {MODELS}")


if __name__ == "__main__":
    main()
