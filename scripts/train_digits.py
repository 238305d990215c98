"""Train the bundled demo model and export it as a TensorFlow SavedModel and as ONNX.

The data is scikit-learn's bundled digits set: 1,797 handwritten digits as 8x8 images (values
0-16, scaled here to 0-1), so nothing is downloaded. A small CNN trains in well under a minute on
a 2-core CPU; the script prints its held-out accuracy and refuses to export below 95%.

It writes the same weights twice, into the package's default model repository:

* ``src/coserve/demo_models/digits/1/model.savedmodel`` (signature ``serving_default``:
  ``image`` FP32[-1, 8, 8, 1] -> ``probabilities`` FP32[-1, 10])
* ``src/coserve/demo_models/digits_onnx/1/model.onnx`` (same names, opset 17)

Needs ``pip install 'coserve[train]'`` (TensorFlow, scikit-learn, tf2onnx). Run it from the
repository root: ``python scripts/train_digits.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent / "src" / "coserve" / "demo_models"
MIN_ACCURACY = 0.95


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as float32 images in [0, 1], split 80/20, stratified, with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return x_train, x_test, y_train, y_test


def build_model() -> object:
    """A small CNN: two convolutions, a pooling layer and two dense layers (~38k weights)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )


def train(x_train: np.ndarray, y_train: np.ndarray, epochs: int) -> object:
    """Train the CNN with Adam; seeded, so a rerun gives a model of the same quality."""
    import keras

    keras.utils.set_random_seed(0)
    model: Any = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


def export(model: object, x_test: np.ndarray) -> None:
    """Write the SavedModel and the ONNX file, and check they agree with Keras."""
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")]

    class Serving(tf.Module):  # type: ignore[misc]
        def __init__(self, keras_model: object) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=signature)  # type: ignore[misc]
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": self.model(image, training=False)}

    # Export a never-compiled copy: the trained model also tracks its optimizer's state (two
    # more copies of every weight), which serving never needs.
    serving_model: Any = build_model()
    serving_model.set_weights(model.get_weights())  # type: ignore[attr-defined]
    module = Serving(serving_model)
    saved = REPOSITORY / "digits" / "1" / "model.savedmodel"
    shutil.rmtree(saved, ignore_errors=True)
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})

    onnx_path = REPOSITORY / "digits_onnx" / "1" / "model.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_function(
        module.serve, input_signature=signature, opset=17, output_path=str(onnx_path)
    )
    _rename_onnx_outputs(onnx_path)

    expected = model(x_test, training=False).numpy()  # type: ignore[operator]
    loaded = tf.saved_model.load(str(saved)).signatures["serving_default"]
    from_saved = loaded(image=tf.constant(x_test))["probabilities"].numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(["probabilities"], {"image": x_test})
    for what, got in (("SavedModel", from_saved), ("ONNX", from_onnx)):
        gap = float(np.abs(got - expected).max())
        print(f"{what}: max difference from Keras {gap:.2e}")
        if gap > 1e-4:
            sys.exit(f"the {what} export disagrees with the trained model")


def _rename_onnx_outputs(path: Path) -> None:
    """tf2onnx names outputs after graph nodes; give the ONNX file the SavedModel's names."""
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    (output,) = graph.output
    old = output.name
    for node in graph.node:
        node.output[:] = ["probabilities" if o == old else o for o in node.output]
    output.name = "probabilities"
    onnx.save(graph_model, str(path))


def main() -> None:
    """Train, check the accuracy, export."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_digits()
    model = train(x_train, y_train, args.epochs)
    probabilities = model(x_test, training=False).numpy()  # type: ignore[operator]
    accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    print(
        f"held-out accuracy: {accuracy:.4f} on {len(y_test)} images "
        f"(trained on {len(y_train)} in {time.perf_counter() - start:.1f}s)"
    )
    if accuracy < MIN_ACCURACY:
        sys.exit(f"accuracy {accuracy:.4f} is below {MIN_ACCURACY}; not exporting")
    export(model, x_test)
    print(f"exported to {REPOSITORY}")


if __name__ == "__main__":
    main()
