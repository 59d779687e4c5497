"""The GAN API in-process: ONNX and eager backends agree, a stale export is replaced, refusals are one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from pantheon.serving import gan
from pantheon.serving.validation import GanLimits, GanRequest
from pantheon.utils.errors import UserError

ASSET = Path(__file__).resolve().parents[1] / "assets" / "serving" / "gan_mnist.ckpt"
REQUESTS = [GanRequest(digit=d, n=1 + d % 3, seed=d, format="npy") for d in range(10)]


def api(model: gan.GanModel) -> gan.GanAPI:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instance = gan.GanAPI(model, GanLimits(max_n=4), max_batch_size=4, batch_timeout=0.0)
    instance.setup("cpu")
    return instance


@pytest.fixture(scope="module")
def onnx_model() -> gan.GanModel:
    return gan.prepare(str(ASSET), backend="auto")


def test_onnx_and_eager_serve_the_same_digits(onnx_model):
    eager_model = gan.prepare(str(ASSET), backend="eager")
    assert (onnx_model.backend, eager_model.backend) == ("onnx", "eager")
    batched = api(onnx_model).predict(REQUESTS)
    eager = api(eager_model).predict(REQUESTS)
    for (request, a), (_, b) in zip(batched, eager, strict=True):
        assert a.shape == (request.n, 28, 28) and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding at the uint8 boundary
    alone = api(onnx_model).predict(REQUESTS[4])  # unbatched (max_batch_size=1 path): one request, one output
    assert np.array_equal(alone[1], batched[4][1])


def test_an_export_that_disagrees_or_is_broken_is_replaced(tmp_path, onnx_model):
    from pantheon.models.gan.export import export_generator
    from pantheon.models.gan.networks import build_networks

    stale, garbage = tmp_path / "stale", tmp_path / "garbage"
    with warnings.catch_warnings():  # a real ONNX file, of another (untrained) generator
        warnings.simplefilter("ignore")
        export_generator(build_networks("dcgan", 100, 10, 32)[0], 100, stale)
    garbage.mkdir()
    (garbage / "generator.onnx").write_bytes(b"not onnx")
    for folder in (stale, garbage):
        model = gan.prepare(str(ASSET), backend="onnx", export_dir=str(folder))
        assert model.backend == "onnx" and Path(model.onnx_path).parent != folder
    good = Path(onnx_model.onnx_path).parent
    assert (
        gan.prepare(str(ASSET), export_dir=str(good)).onnx_path == onnx_model.onnx_path
    )  # a match is reused


def test_without_onnxruntime_auto_falls_back_to_eager_and_onnx_refuses(monkeypatch):
    def broken(*args, **kwargs):
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr(gan, "onnx_session", broken)
    assert gan.prepare(str(ASSET), backend="auto").backend == "eager"
    with pytest.raises(UserError, match=r"backend=onnx: cannot serve .*ImportError"):
        gan.prepare(str(ASSET), backend="onnx")
