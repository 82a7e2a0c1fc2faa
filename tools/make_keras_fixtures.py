#!/usr/bin/env python3
"""Convert real Keras models to ONNX with tf2onnx (and Keras' own exporter, and Keras -> TFLite -> tf2onnx),
for ``tests/test_keras*.py``.

The team had only a hand-written graph in tf2onnx's style (``tests/fixtures/exporters/keras_nhwc.onnx``);
these are real conversions.  The small fixtures are built from Keras' own application blocks
(``keras.src.applications``: MobileNetV2's and V3's inverted residual blocks with their squeeze-excitation
and hard-swish, EfficientNet's MBConv block with swish, ResNet's bottleneck, DenseNet's dense and
transition blocks), with their stems and preprocessing layers (Rescaling, Normalization), at reduced
widths and 32x32 inputs, so that every file stays well under 1 MB; their weights are random (seeded),
BatchNormalization statistics included.  ``--full DIR`` converts the full-size ``keras.applications``
(weights=None: the architecture is what matters) into DIR instead, for a check by hand.

Exporter paths, each written as ``<model>_<path>.onnx``:

* ``tf2onnx``   ``tf2onnx.convert.from_function`` on a ``tf.function`` around the model, opset 13
  (``from_keras`` fails on Keras 3 models in tf2onnx 1.17: KeyError on a ``keras_tensor`` name)
* ``saved``     ``model.export(DIR)`` (a SavedModel) then ``python -m tf2onnx.convert --saved-model DIR
  --opset 17``: the command line most users run
* ``saved-nchw``  the same with ``--inputs-as-nchw``: the file takes NCHW images (its ``x`` is transposed)
* ``keras``     Keras 3's ``model.export(PATH, format="onnx")`` (tf2onnx inside, its default opset)
* ``tflite-dynamic``  the same with ``optimizations=[tf.lite.Optimize.DEFAULT]``: int8 weights (those over
  1024 values) behind DequantizeLinear, float arithmetic
* ``tflite-int8``  the same with a representative dataset (the test images and 14 random ones): int8
  activations too (QuantizeLinear / DequantizeLinear around every op; float input and output)
* ``tflite``    ``tf.lite.TFLiteConverter.from_keras_model`` then ``python -m tf2onnx.convert --tflite
  --opset 15``: the path of models deployed on devices (at opset 13 tf2onnx writes HardSwish, an opset-14
  op, and ONNX Runtime refuses the file)

Beside each file ``<name>.npz`` holds ``x`` (a float32 batch of 2 raw [0, 255] NHWC pixels: the models
scale them themselves), ``keras_probabilities`` (Keras' own output), ``ort_logits`` (ONNX Runtime's output
of the graph cut before its final Softmax) and ``ort_probabilities`` (the model's own output).
``manifest.json`` records opsets, op types, sizes and the versions of everything that wrote them.

Requirements (only for this script; never onnxrap's): tensorflow-cpu 2.21.0, tf2onnx 1.17.0 (keras 3.15.1
comes with TensorFlow), onnxruntime.  Python 3.11.

Usage:  python tools/make_keras_fixtures.py [--out tests/fixtures/keras] [--seed 0] [--only NAME,...]
        python tools/make_keras_fixtures.py --full /tmp/keras-full [--size 96]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import traceback
import zlib
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("tf2onnx", "saved", "saved-nchw", "keras", "tflite", "tflite-dynamic", "tflite-int8")
QUANTIZED = ("tflite-dynamic", "tflite-int8")  # other weights or arithmetic than Keras': compared loosely


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- the small models: Keras' own blocks, narrow ------------------------------------------
def small_models():
    """name -> a function building the model (3 channels, 32x32, 10 classes, final softmax)."""
    import keras
    from keras import layers
    from keras.src.applications import densenet, efficientnet, mobilenet_v2, mobilenet_v3, resnet

    def head(x, name):
        x = layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, layers.Dense(10, activation="softmax", name="predictions")(x), name=name)

    inputs = None

    def start():
        nonlocal inputs
        inputs = keras.Input((32, 32, 3), name="image")
        return inputs

    def mobilenet_v2_small():
        x = layers.Rescaling(1 / 127.5, offset=-1)(start())
        x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
        x = mobilenet_v2._inverted_res_block(x, filters=8, alpha=1.0, stride=1, expansion=1, block_id=0)
        x = mobilenet_v2._inverted_res_block(x, filters=16, alpha=1.0, stride=2, expansion=6, block_id=1)
        x = mobilenet_v2._inverted_res_block(x, filters=16, alpha=1.0, stride=1, expansion=6, block_id=2)
        x = layers.Conv2D(32, 1, use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
        return head(x, "mobilenet_v2_small")

    def mobilenet_v3_small():
        # MobileNetV3's stem, blocks (ReLU and hard-swish, SE with hard-sigmoid) and its own top
        x = layers.Rescaling(1 / 127.5, offset=-1)(start())
        x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
        x = mobilenet_v3.hard_swish(layers.BatchNormalization()(x))
        x = mobilenet_v3._inverted_res_block(x, 1, 8, 3, 2, 0.25, mobilenet_v3.relu, 0)
        x = mobilenet_v3._inverted_res_block(x, 72 / 16, 16, 3, 1, None, mobilenet_v3.relu, 1)
        x = mobilenet_v3._inverted_res_block(x, 4, 16, 5, 1, 0.25, mobilenet_v3.hard_swish, 2)
        x = layers.Conv2D(32, 1, use_bias=False)(x)
        x = mobilenet_v3.hard_swish(layers.BatchNormalization()(x))
        x = layers.GlobalAveragePooling2D(keepdims=True)(x)
        x = mobilenet_v3.hard_swish(layers.Conv2D(48, 1, use_bias=True)(x))
        x = layers.Conv2D(10, 1)(layers.Dropout(0.2)(x))
        x = layers.Flatten()(x)
        x = layers.Activation("softmax", name="predictions")(x)
        return keras.Model(inputs, x, name="mobilenet_v3_small")

    def efficientnet_small():
        x = layers.Rescaling(1 / 255)(start())
        # as EfficientNet builds it: statistics as the layer's variables (its ImageNet weights fill them)
        normalization = layers.Normalization(axis=-1)
        x = normalization(x)
        normalization.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]) ** 2, np.array(0)])
        normalization.finalize_state()  # what loading weights does: mean and variance become tensors
        x = layers.Conv2D(8, 3, strides=2, padding="valid", use_bias=False)(layers.ZeroPadding2D(((0, 1), (0, 1)))(x))
        x = layers.Activation("swish")(layers.BatchNormalization()(x))
        x = efficientnet.block(x, "swish", 0.0, "block1a_", 8, 8, 3, 1, 1, 0.25)
        x = efficientnet.block(x, "swish", 0.0, "block2a_", 8, 16, 3, 2, 6, 0.25)
        x = efficientnet.block(x, "swish", 0.1, "block2b_", 16, 16, 5, 1, 6, 0.25)
        x = layers.Conv2D(32, 1, use_bias=False)(x)
        x = layers.Activation("swish")(layers.BatchNormalization()(x))
        return head(x, "efficientnet_small")

    def resnet_small():
        x = layers.ZeroPadding2D(3)(start())
        x = layers.Conv2D(8, 7, strides=2)(x)
        x = layers.Activation("relu")(layers.BatchNormalization(epsilon=1.001e-5)(x))
        x = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))
        x = resnet.stack_residual_blocks_v1(x, 4, 2, stride1=1, name="conv2")
        x = resnet.stack_residual_blocks_v1(x, 8, 2, name="conv3")
        return head(x, "resnet_small")

    def densenet_small():
        x = layers.ZeroPadding2D(3)(start())
        x = layers.Conv2D(8, 7, strides=2, use_bias=False)(x)
        x = layers.Activation("relu")(layers.BatchNormalization(epsilon=1.001e-5)(x))
        x = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))
        for k in (1, 2):  # dense_block(x, 2, "conv2") with growth rate 8 for Keras' 32
            x = densenet.conv_block(x, 8, name=f"conv2_block{k}")
        x = densenet.transition_block(x, 0.5, name="pool2")
        x = layers.Activation("relu")(layers.BatchNormalization(epsilon=1.001e-5)(x))
        return head(x, "densenet_small")

    def sequential_cnn():
        return keras.Sequential([
            keras.Input((32, 32, 3), name="image"), layers.Rescaling(1 / 255),
            layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(),
            layers.Conv2D(16, 3, padding="same", activation="relu"), layers.AveragePooling2D(2),
            layers.Flatten(), layers.Dense(32, activation="relu"), layers.Dense(10, activation="softmax"),
        ], name="sequential_cnn")

    return {f.__name__: f for f in (mobilenet_v2_small, mobilenet_v3_small, efficientnet_small, resnet_small,
                                    densenet_small, sequential_cnn)}


def full_models(size):
    """The full-size applications (random weights), at ``size`` x ``size`` inputs."""
    import keras

    apps, shape = keras.applications, (size, size, 3)
    return {
        "MobileNetV2_a035": lambda: apps.MobileNetV2(input_shape=shape, alpha=0.35, weights=None),
        "MobileNetV3Small": lambda: apps.MobileNetV3Small(input_shape=shape, weights=None),
        "MobileNetV3Large": lambda: apps.MobileNetV3Large(input_shape=shape, weights=None),
        "EfficientNetB0": lambda: apps.EfficientNetB0(input_shape=shape, weights=None),
        "ResNet50": lambda: apps.ResNet50(input_shape=shape, weights=None),
        "DenseNet121": lambda: apps.DenseNet121(input_shape=shape, weights=None),
    }


def randomise_statistics(model, rng):
    """BatchNormalization statistics and gains as a trained network has them (Keras starts them at 0 and 1).
    Gains stay positive and close to 1 so that 20-50 layers deep the activations neither vanish nor explode."""
    from keras import layers

    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = (w.numpy() for w in (layer.gamma, layer.beta, layer.moving_mean,
                                                          layer.moving_variance))
            layer.set_weights([rng.uniform(0.6, 1.2, gamma.shape), 0.1 * rng.standard_normal(beta.shape),
                               0.1 * rng.standard_normal(mean.shape), rng.uniform(0.5, 1.5, var.shape)])


# -- the exporter paths ----------------------------------------------------------------
def convert(model, path, out, work, calibration=()):
    """Write ``model`` through exporter ``path`` to ``out`` (an .onnx file); ``calibration``: images that the
    int8 path calibrates its ranges on, besides random ones."""
    import tensorflow as tf
    import tf2onnx

    shape = (None, *model.input_shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    if path == "tf2onnx":
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=13, output_path=str(out))
    elif path in ("saved", "saved-nchw"):
        model.export(str(work / "saved"), format="tf_saved_model", verbose=False)
        options = ["--opset", "17"]
        if path == "saved-nchw":  # tf2onnx transposes the input itself: the file takes NCHW
            (signature,) = tf.saved_model.load(str(work / "saved")).signatures["serving_default"] \
                .structured_input_signature[1].values()
            options += ["--inputs-as-nchw", signature.name]
        _run_tf2onnx(["--saved-model", str(work / "saved"), *options, "--output", str(out)])
    elif path == "keras":
        model.export(str(out), format="onnx", verbose=False)
    elif path.startswith("tflite"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if path in QUANTIZED:  # int8 weights; with sample inputs, int8 activations too (float in and out)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if path == "tflite-int8":  # calibrated on the test images too: random weights give narrow ranges,
            # and an image outside them saturates the grid (MobileNetV3's top logit did, its gradient then 0)
            rng = np.random.default_rng(1)
            samples = [*calibration, *rng.uniform(0, 255, (14, *model.input_shape[1:])).astype(np.float32)]
            converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
        (work / "model.tflite").write_bytes(converter.convert())
        _run_tf2onnx(["--tflite", str(work / "model.tflite"), "--opset", "15", "--output", str(out)])
    else:
        raise ValueError(path)


def _run_tf2onnx(args):
    done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])


def op_types(model):
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def logits_model(model):
    """The graph cut before its final Softmax and, in an int8 model, before the rounding of its probabilities
    and logits: the head's float output becomes the output (what onnxrap explains)."""
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    producer = {o: n for n in cut.graph.node for o in n.output}
    last = producer[cut.graph.output[0].name]
    while last.op_type in ("QuantizeLinear", "DequantizeLinear"):
        last = producer[last.input[0]]
    assert last.op_type == "Softmax", last.op_type
    logits = last.input[0]
    if producer[logits].op_type == "DequantizeLinear" and producer[producer[logits].input[0]].op_type == "QuantizeLinear":
        logits = producer[producer[logits].input[0]].input[0]
    del cut.graph.output[:]
    cut.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    return cut


def ort_run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "keras"))
    p.add_argument("--full", metavar="DIR", help="convert the full-size keras.applications into DIR instead")
    p.add_argument("--size", type=int, default=96, help="input size of the full-size models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="comma-separated model names")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated exporter paths")
    args = p.parse_args(argv)
    import keras

    out = Path(args.full or args.out)
    out.mkdir(parents=True, exist_ok=True)
    builders = full_models(args.size) if args.full else small_models()
    if args.only:
        builders = {k: builders[k] for k in args.only.split(",")}
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}, "failed": {}}
    manifest.update(versions={k: version(k) for k in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime",
                                                      "numpy", "protobuf")},
                    python=sys.version.split()[0], seed=args.seed)
    for model_name, build in builders.items():
        seed = [args.seed, zlib.crc32(model_name.encode())]  # each model's own: --only writes the same files
        keras.utils.set_random_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        rng = np.random.default_rng(seed)
        model = build()
        randomise_statistics(model, rng)
        size = model.input_shape[1:]
        x = rng.uniform(0, 255, (2, *size)).astype(np.float32)
        probabilities = model.predict(x, verbose=0)
        for path in args.paths.split(","):
            name = f"{model_name}_{path}"
            x_path = x.transpose(0, 3, 1, 2) if path.endswith("-nchw") else x
            with tempfile.TemporaryDirectory() as work:
                try:
                    convert(model, path, out / f"{name}.onnx", Path(work), calibration=x)
                    proto = onnx.load(str(out / f"{name}.onnx"))
                    ort_probabilities = ort_run(proto, x_path)  # some exports are written but do not run
                except Exception as exc:
                    manifest["failed"][name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
                    manifest["files"].pop(name, None)
                    (out / f"{name}.npz").unlink(missing_ok=True)
                    if (out / f"{name}.onnx").is_file():  # kept: what onnxrap says of it is tested
                        manifest["failed"][name] += " (the file is kept, without .npz)"
                    print(f"{name}: FAILED {manifest['failed'][name]}")
                    traceback.print_exc(limit=2)
                    continue
            manifest["failed"].pop(name, None)
            worst = float(np.abs(ort_probabilities - probabilities).max())
            assert path in QUANTIZED or worst < 1e-4, (name, worst)  # the rounding's effect is recorded
            np.savez_compressed(out / f"{name}.npz", x=x_path, keras_probabilities=probabilities,
                                ort_logits=ort_run(logits_model(proto), x_path), ort_probabilities=ort_probabilities)
            entry = {"opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
                     "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
                     "input": [proto.graph.input[0].name,
                               [d.dim_value or d.dim_param or None for d in proto.graph.input[0].type.tensor_type.shape.dim]],
                     "op_types": op_types(proto), "bytes": (out / f"{name}.onnx").stat().st_size,
                     "keras_params": int(model.count_params()), "max_abs_keras_vs_ort": worst}
            manifest["files"][name] = entry
            print(f"{name}: {entry['bytes']} bytes, opsets {entry['opsets']}, ops {entry['op_types']}", flush=True)
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
