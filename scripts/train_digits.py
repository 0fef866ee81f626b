#!/usr/bin/env python3
"""Train small MobileNetV2-style networks on the digits, with and without PSC, and export them as
int8 ONNX for psc.onnx_import.

Needs the ``train`` extra (``pip install -e .[train]``: PyTorch, scikit-learn, matplotlib)::

    python scripts/train_digits.py                 # train, export, write the shipped files
    python scripts/train_digits.py --folds 1       # only fold 0 (the shipped networks)
    python scripts/train_digits.py --write-data    # rewrite psc/data/digits.npz from scikit-learn

Variants, each trained on every fold of the fixed split (:func:`psc.data.digits_split`):

* ``relu``: the baseline, ReLU after the expansion and the depthwise convolution;
* ``prelu``: PReLU in those places (same MACs), exported as PSC with ``W- = a W+``;
* ``psc``: the baseline's depthwise and projection convolutions made PSC by INI
  (``W+ = W0, W- = 0``, the same function as the baseline), then fine-tuned;
* ``psc_scratch``: the PSC network trained from a random start.

Each is exported to float ONNX (batch norms folded, the PSC convolutions in the
representation of :mod:`psc.onnx_import`), quantised by onnxruntime's static
quantiser calibrated on the training split (:func:`psc.onnx_import.quantize`)
and imported; accuracy is measured in float (PyTorch), on the int8 golden
network and on onnxruntime. Fold 0's ``relu`` and ``psc`` networks are written
to ``gateware/psc/data/digits_<variant>.onnx``, every figure to
``gateware/psc/data/digits_results.json``, the plot of the positive activation
ratio per layer to ``docs/par_digits.png``, and a Markdown table to stdout.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "gateware" / "psc" / "data"

try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError:  # the tests import PSCConv2d only when torch is there
    torch = None
    nn = None

VARIANTS = ("relu", "prelu", "psc", "psc_scratch")
EPOCHS = 60          # every variant's total training epochs
FINE_TUNE = 20       # of them, for "psc": after the baseline's EPOCHS - FINE_TUNE
#: (expansion, output channels, stride, residual) of the inverted-residual blocks
BLOCKS = ((2, 16, 1, True), (2, 24, 2, False), (2, 24, 1, True))
STEM, HEAD, CLASSES = 16, 64, 10


if nn is not None:
    class PSCConv2d(nn.Module):
        """Drop-in for ``nn.Conv2d`` with Phase Selective Convolution: ``W+`` where the input is
        ``>= 0``, ``W-`` where it is negative, computed as
        ``conv(relu(x), W+) + conv(min(x, 0), W-) + bias``."""

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                     groups=1, bias=True):
            super().__init__()
            shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
            self.weight_pos = nn.Parameter(torch.empty(shape))
            self.weight_neg = nn.Parameter(torch.empty(shape))
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
            self.stride, self.padding, self.groups = stride, padding, groups
            for w in (self.weight_pos, self.weight_neg):
                nn.init.kaiming_uniform_(w, a=5 ** 0.5)

        def forward(self, x):
            kw = dict(stride=self.stride, padding=self.padding, groups=self.groups)
            return (F.conv2d(F.relu(x), self.weight_pos, self.bias, **kw)
                    + F.conv2d(torch.clamp(x, max=0), self.weight_neg, None, **kw))

        @classmethod
        def from_conv(cls, conv, init="ini"):
            """A PSC convolution initialised from a trained ``nn.Conv2d`` (paper, section 3.5):
            ``"ini"`` (``W+ = W0``, ``W- = 0``: equals ``conv(relu(x))``) or ``"ili"``
            (``W+ = W- = W0``: equals ``conv(x)``)."""
            if init not in ("ini", "ili"):
                raise ValueError(f"init must be 'ini' or 'ili', not {init!r}")
            if conv.kernel_size[0] != conv.kernel_size[1] or conv.dilation != (1, 1):
                raise ValueError(f"conv must have a square kernel and no dilation, not {conv}")
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                      conv.stride[0], conv.padding[0], conv.groups, conv.bias is not None)
            with torch.no_grad():
                new.weight_pos.copy_(conv.weight)
                new.weight_neg.copy_(conv.weight if init == "ili" else torch.zeros_like(conv.weight))
                if conv.bias is not None:
                    new.bias.copy_(conv.bias)
            return new

    class Block(nn.Module):
        """Inverted residual: 1x1 expansion, depthwise 3x3, linear 1x1 projection, add."""

        def __init__(self, cin, expand, cout, stride, residual, mode):
            super().__init__()
            mid = cin * expand
            self.residual = residual
            self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
            self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
            self.dw_bn = nn.BatchNorm2d(mid)
            self.project = nn.Conv2d(mid, cout, 1, bias=False)
            self.project_bn = nn.BatchNorm2d(cout)
            self.act_e, self.act_d = self._acts(mode, mid)

        @staticmethod
        def _acts(mode, mid):
            if mode == "relu":
                return nn.ReLU(), nn.ReLU()
            if mode == "prelu":
                return nn.PReLU(mid, 0.25), nn.PReLU(mid, 0.25)
            return nn.Identity(), nn.Identity()

        def make_psc(self, init):
            """The depthwise and projection convolutions as PSC, their ReLUs removed."""
            self.dw = PSCConv2d.from_conv(self.dw, init)
            self.project = PSCConv2d.from_conv(self.project, init)
            self.act_e, self.act_d = nn.Identity(), nn.Identity()

        def forward(self, x):
            h = self.act_e(self.expand(x))
            h = self.act_d(self.dw_bn(self.dw(h)))
            h = self.project_bn(self.project(h))
            return x + h if self.residual else h

    class Net(nn.Module):
        """Stem 3x3, three inverted-residual blocks, 1x1 head with ReLU, global average
        pooling, fully connected classifier."""

        def __init__(self, mode):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, STEM, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(STEM), nn.ReLU())
            blocks, cin = [], STEM
            for expand, cout, stride, residual in BLOCKS:
                blocks.append(Block(cin, expand, cout, stride, residual,
                                    "psc-pending" if mode == "psc" else mode))
                cin = cout
            self.blocks = nn.ModuleList(blocks)
            if mode == "psc":
                for b in self.blocks:
                    b.make_psc("ini")
                    for conv in (b.dw, b.project):   # from scratch: fresh W+ and W-
                        for w in (conv.weight_pos, conv.weight_neg):
                            nn.init.kaiming_uniform_(w, a=5 ** 0.5)
            self.head = nn.Sequential(nn.Conv2d(cin, HEAD, 1, bias=False), nn.BatchNorm2d(HEAD),
                                      nn.ReLU())
            self.fc = nn.Linear(HEAD, CLASSES)

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            return self.fc(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


# --- training -------------------------------------------------------------------------

def train(model, x, y, epochs, seed, lr=3e-3):
    """Adam with a cosine schedule, batches of 64, small random shifts of the images."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb = xt[idx]
            # one-pixel shifts so that where a digit sits matters less (-1 is the background)
            dy, dx = (int(v) - 1 for v in torch.randint(0, 3, (2,), generator=g))
            xb = torch.roll(F.pad(xb, (1, 1, 1, 1), value=-1.0), (dy, dx), (2, 3))[..., 1:-1, 1:-1]
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy() == y).mean())


# --- export ---------------------------------------------------------------------------

def _fold_bn(w, bn, bias=None):
    """Weights and bias of a convolution followed by batch norm ``bn`` (eval mode)."""
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    b = bn.bias.detach().numpy() - bn.running_mean.detach().numpy() * s
    if bias is not None:
        b = b + bias * s
    return [wi * s.reshape(-1, *([1] * (wi.ndim - 1))) for wi in w], b


def _weights(conv, act):
    """``[W+, W-]`` of a convolution whose input passed ``act`` (ReLU, PReLU or nothing):
    PSC as trained, PReLU as PSC (``W- = a W+``), plain as one tensor."""
    if isinstance(conv, PSCConv2d):
        return [conv.weight_pos.detach().numpy(), conv.weight_neg.detach().numpy()]
    w = conv.weight.detach().numpy()
    if isinstance(act, nn.PReLU):
        a = act.weight.detach().numpy()
        # a depthwise weight (C, 1, K, K) meets input channel c in row c, others in column j
        a = a.reshape(-1, 1, 1, 1) if conv.groups > 1 else a.reshape(1, -1, 1, 1)
        return [w, w * a]
    return [w]


def to_onnx(model, name):
    """The float ONNX graph of a trained ``Net``; returns ``(model, nodes to keep float)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from psc.onnx_import import psc_pattern, psc_weights
    nodes, inits, keep = [], [], []

    def init(n, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), n))
        return n

    def conv(n, x, ws, b, k, stride=1, groups=1, relu=False, hw=None):
        if len(ws) == 2:
            pn, pi, x, names = psc_pattern(n, x, [0, -1, hw, hw])
            nodes.extend(pn)
            inits.extend(pi)
            keep.extend(names)
            w = psc_weights(*ws)
        else:
            w = ws[0]
        nodes.append(helper.make_node("Conv", [x, init(f"{n}_w", w), init(f"{n}_b", b)], [n],
                                      name=n, kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=groups))
        if relu:
            nodes.append(helper.make_node("Relu", [n], [f"{n}_relu"], name=f"{n}_relu"))
            return f"{n}_relu"
        return n

    stem_conv, stem_bn = model.stem[0], model.stem[1]
    ws, b = _fold_bn([stem_conv.weight.detach().numpy()], stem_bn)
    x = conv("stem", "x", ws, b, 3, relu=True)
    hw = 8
    for i, blk in enumerate(model.blocks):
        relu_e = isinstance(blk.act_e, nn.ReLU)
        ws, b = _fold_bn([blk.expand[0].weight.detach().numpy()], blk.expand[1])
        h = conv(f"b{i}_expand", x, ws, b, 1, relu=relu_e)
        ws, b = _fold_bn(_weights(blk.dw, blk.act_e), blk.dw_bn,
                         None if blk.dw.bias is None else blk.dw.bias.detach().numpy())
        relu_d = isinstance(blk.act_d, nn.ReLU)
        stride = blk.dw.stride if isinstance(blk.dw, PSCConv2d) else blk.dw.stride[0]
        h = conv(f"b{i}_dw", h, ws, b, 3, stride=stride, groups=ws[0].shape[0], relu=relu_d,
                 hw=hw)
        hw = (hw - 1) // stride + 1
        ws, b = _fold_bn(_weights(blk.project, blk.act_d), blk.project_bn,
                         None if blk.project.bias is None else blk.project.bias.detach().numpy())
        h = conv(f"b{i}_project", h, ws, b, 1, hw=hw)
        if blk.residual:
            nodes.append(helper.make_node("Add", [x, h], [f"b{i}_add"], name=f"b{i}_add"))
            h = f"b{i}_add"
        x = h
    ws, b = _fold_bn([model.head[0].weight.detach().numpy()], model.head[1])
    x = conv("head", x, ws, b, 1, relu=True)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat", axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", init("fc_w", model.fc.weight.detach().numpy()),
                                           init("fc_b", model.fc.bias.detach().numpy())],
                                  ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="psc-accel scripts/train_digits.py")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m, keep


# --- experiments ----------------------------------------------------------------------

def count(model):
    """Parameters and MACs per image (convolutions and the classifier)."""
    params = sum(p.numel() for p in model.parameters())
    macs, hw = 0, 8
    macs += hw * hw * STEM * 9
    cin = STEM
    for expand, cout, stride, _ in BLOCKS:
        mid = cin * expand
        macs += hw * hw * cin * mid
        hw = (hw - 1) // stride + 1
        macs += hw * hw * mid * 9 + hw * hw * mid * cout
        cin = cout
    macs += hw * hw * cin * HEAD + HEAD * CLASSES
    return params, macs


def run_fold(fold, out_dir, log):
    """Every variant on one fold; returns ``{variant: figures}`` and the int8 networks."""
    from psc.data import digits_split
    from psc.onnx_import import import_onnx, onnxruntime_run, quantize
    xtr, ytr, xte, yte = digits_split(fold)
    seed = 1000 + fold
    figures, nets = {}, {}
    models = {}
    for variant in VARIANTS:
        t0 = time.time()
        torch.manual_seed(seed)
        if variant == "psc":
            base = Net("relu")
            base.load_state_dict(models["relu"].state_dict())
            for b in base.blocks:
                b.make_psc("ini")
            # INI keeps the function: the fine-tuning starts at the baseline's accuracy
            start = accuracy(base, xte, yte)
            model = train(base, xtr, ytr, FINE_TUNE, seed, lr=1e-3)
        else:
            model = train(Net("psc" if variant == "psc_scratch" else variant), xtr, ytr,
                          EPOCHS, seed)
            start = None
        models[variant] = model
        fl = accuracy(model, xte, yte)
        onnx_model, keep = to_onnx(model, f"digits_{variant}")
        qpath = out_dir / f"digits_{variant}_fold{fold}.onnx"
        quantize(onnx_model, qpath, xtr[:512], keep_float=keep)
        net = import_onnx(qpath)
        gold = float((net.classify(net.quantize_input(xte)) == yte).mean())
        ort = onnxruntime_run(qpath, xte).argmax(1)
        params, macs = count(model)
        figures[variant] = {"float": fl, "int8_golden": gold,
                            "int8_onnxruntime": float((ort == yte).mean()),
                            "agreement": float((ort == net.classify(net.quantize_input(xte))).mean()),
                            "params": params, "macs": macs,
                            "seconds": round(time.time() - t0, 1)}
        if start is not None:
            figures[variant]["ini_start"] = start
        nets[variant] = (net, qpath)
        log(f"fold {fold} {variant:12s} float {fl:.4f}  int8 golden {gold:.4f}  "
            f"onnxruntime {figures[variant]['int8_onnxruntime']:.4f}  "
            f"({figures[variant]['seconds']} s)")
    return figures, nets


def regression_abs(log):
    """Section 3.1: fit ``|x|`` with a ReLU-before-conv unit and with static PSC, on the model."""
    from psc.model.golden import conv2d, psc_conv2d
    x = np.arange(-127, 128).reshape(1, 1, -1)                 # (C=1, H=1, W) int8 inputs
    target = np.abs(x).reshape(-1).astype(np.float64)
    # the best w, b of y = w * relu(x) + b, so its error is the unit's, not the training's
    relu_x = np.maximum(x, 0).reshape(-1).astype(np.float64)
    a = np.stack([relu_x, np.ones_like(relu_x)], axis=1)
    coef, *_ = np.linalg.lstsq(a, target, rcond=None)
    relu_loss = float(np.mean((a @ coef - target) ** 2))
    # integer weights, as the model runs them, can only add to that error
    w = np.array([[[[round(coef[0])]]]])
    relu_model = conv2d(np.maximum(x, 0), w, np.array([round(coef[1])])).reshape(-1)
    # static PSC represents |x| exactly: W+ = 1 where x >= 0, W- = -1 below
    psc = psc_conv2d(x, np.ones((1, 1, 1, 1), np.int64), -np.ones((1, 1, 1, 1), np.int64))
    psc_loss = float(np.mean((psc.reshape(-1) - target) ** 2))
    log(f"|x| regression over int8 x: ReLU baseline least-squares MSE {relu_loss:.1f} "
        f"(integer weights: {float(np.mean((relu_model - target) ** 2)):.1f}), "
        f"static PSC (W+ = 1, W- = -1) MSE {psc_loss:.1f}")
    return {"relu_mse": relu_loss, "psc_mse": psc_loss}


def plot_par(nets, path, log):
    """PAR of each convolution's input on the test split, baseline against PSC (Figure 5)."""
    from psc.data import digits_split
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no PAR plot")
        return {}
    _, _, xte, _ = digits_split(0)
    pars = {}
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for variant, marker in (("relu", "o"), ("psc", "s")):
        net = nets[variant][0]
        rows = [r for r in net.summary(net.quantize_input(xte)) if r["op"] == "conv"]
        pars[variant] = {r["name"]: r["par"] for r in rows}
        ax.plot(range(len(rows)), [r["par"] for r in rows], marker=marker,
                label={"relu": "ReLU baseline", "psc": "PSC (INI + fine-tune)"}[variant])
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=45, ha="right",
                      fontsize=7)
    ax.set_ylabel("PAR of the layer's input")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    log(f"wrote {path}")
    return pars


def table(results):
    """Markdown: mean +- standard deviation over the folds, per variant."""
    names = {"relu": "ReLU baseline", "prelu": "PReLU (same MACs)",
             "psc": "PSC, INI + fine-tune", "psc_scratch": "PSC from scratch"}
    lines = ["| network | params | MACs | float | int8 (golden) | int8 (onnxruntime) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for v in VARIANTS:
        rows = [f[v] for f in results]

        def ms(key):
            a = np.array([r[key] for r in rows]) * 100
            return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"
        lines.append(f"| {names[v]} | {rows[0]['params']} | {rows[0]['macs']} | {ms('float')} | "
                     f"{ms('int8_golden')} | {ms('int8_onnxruntime')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=5, help="folds to run (1..5; fold 0 ships)")
    p.add_argument("--out", type=Path, default=DATA, help="where the shipped files go")
    p.add_argument("--write-data", action="store_true",
                   help="rewrite digits.npz from scikit-learn and stop")
    args = p.parse_args(argv)
    if args.write_data:
        from sklearn.datasets import load_digits
        d = load_digits()
        np.savez_compressed(DATA / "digits.npz", images=d.images.astype(np.uint8),
                            labels=d.target.astype(np.uint8))
        print(f"wrote {DATA / 'digits.npz'}")
        return 0
    if torch is None:
        sys.exit("train_digits.py needs PyTorch: pip install -e .[train]")
    if not 1 <= args.folds <= 5:
        sys.exit(f"--folds must be in 1..5, not {args.folds}")
    # one thread and deterministic kernels: the same files on every run
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    log = lambda s: print(s, flush=True)  # noqa: E731
    import tempfile
    results, shipped = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for fold in range(args.folds):
            figures, nets = run_fold(fold, Path(tmp), log)
            results.append(figures)
            if fold == 0:
                shipped = nets
                args.out.mkdir(parents=True, exist_ok=True)
                for v in ("relu", "psc"):
                    dst = args.out / f"digits_{v}.onnx"
                    dst.write_bytes(nets[v][1].read_bytes())
                    log(f"wrote {dst} ({dst.stat().st_size} bytes)")
        reg = regression_abs(log)
        pars = plot_par(shipped, ROOT / "docs" / "par_digits.png", log)
    summary = {"epochs": EPOCHS, "fine_tune_epochs": FINE_TUNE, "folds": results,
               "shipped": {v: results[0][v] for v in ("relu", "psc")},
               "par": pars, "regression_abs": reg,
               "minutes": round((time.time() - t0) / 60, 1)}
    (args.out / "digits_results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(table(results))
    print(f"\n{len(results)} fold(s), {summary['minutes']} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
