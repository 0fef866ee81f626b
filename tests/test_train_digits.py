"""Tests of scripts/train_digits.py that need PyTorch (the `train` extra): PSCConv2d against the
golden model's float reference, its INI/ILI initialisation, and the float ONNX export of each
variant against PyTorch. Skipped when torch is not installed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from psc.model.golden import psc_conv2d_float  # noqa: E402
from psc.onnx_import import import_onnx, onnxruntime_run, quantize  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "train_digits", Path(__file__).resolve().parent.parent / "scripts" / "train_digits.py")
train_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_digits)
PSCConv2d = train_digits.PSCConv2d


@pytest.mark.parametrize("groups, k, stride", [(1, 3, 1), (6, 3, 2), (1, 1, 1)])
def test_psc_conv2d_matches_the_golden_float_reference(groups, k, stride):
    torch.manual_seed(0)
    conv = PSCConv2d(6, 6, k, stride, k // 2, groups)
    x = torch.randn(2, 6, 5, 5)
    got = conv(x).detach().numpy()
    want = psc_conv2d_float(x.numpy(), conv.weight_pos.detach().numpy(),
                            conv.weight_neg.detach().numpy(), conv.bias.detach().numpy(),
                            stride=stride, padding=k // 2, groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_from_conv_ini_and_ili():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 5, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    ini = PSCConv2d.from_conv(conv, "ini")
    ili = PSCConv2d.from_conv(conv, init="ili")
    with torch.no_grad():
        torch.testing.assert_close(ini(x), conv(torch.relu(x)))
        torch.testing.assert_close(ili(x), conv(x))
    with pytest.raises(ValueError, match="init must be 'ini' or 'ili', not 'zero'"):
        PSCConv2d.from_conv(conv, "zero")


@pytest.mark.parametrize("mode", ["relu", "prelu", "psc"])
def test_export_matches_torch_and_imports(mode, tmp_path):
    torch.manual_seed(2)
    model = train_digits.Net(mode)
    # non-trivial batch-norm statistics and PReLU slopes, as after training
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(-0.5, 0.5)
    model.eval()
    x = np.random.default_rng(3).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    onnx_model, keep = train_digits.to_onnx(model, "t")
    with torch.no_grad():
        want = model(torch.tensor(x)).numpy()
    np.testing.assert_allclose(onnxruntime_run(onnx_model, x), want, rtol=1e-4, atol=1e-4)
    quantize(onnx_model, tmp_path / "q.onnx", x, keep_float=keep)
    net = import_onnx(tmp_path / "q.onnx")
    assert sum(l.psc for l in net.layers) == (0 if mode == "relu" else 6)
