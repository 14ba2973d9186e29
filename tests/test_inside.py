"""Seeing inside: layers that show the trained weights, every layer's output for a batch
(Executor.activations), gradients without an update (Executor.gradients), the per-batch
loss of fit. Values are checked against forward and backward passes written out by hand
in float64 NumPy, and against a train step."""
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from engine import nn
from engine.data import DataLoader, synthetic
from engine.executor import Executor, LiveArrays
from engine.graph import Model
from engine.models import lenet5
from engine.optim import SGD, Adam
from engine.reference.dropout import dropout_mask
from engine.schedules import Cosine
from engine.tolerances import assert_close, tol
from engine.training import fit


def batch(rng, n, shape, classes):
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def host(ex, layer, name):
    return np.array(ex.param(layer, name), dtype=np.float64)


def param_names(ex):
    """(name, layer, key) of every parameter, named as torch names them."""
    return [(name, layer, key) for name, layer, key in ex._named() if key in layer.params]


# --------------------------------------------------------------------------- hand-run passes

def conv(x, w, b, pad):
    """x (N, C, H, W), w (K, C, R, S), stride 1 -> (N, K, P, Q), by the definition."""
    windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))), w.shape[2:], axis=(2, 3))
    return np.einsum("ncpqrs,kcrs->nkpq", windows, w) + b[None, :, None, None]


def softmax_xent_grad(logits, y):
    """(mean cross-entropy, its gradient (softmax - onehot) / N)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    p[np.arange(len(y)), y] -= 1
    return loss, p / len(y)


class Small(Model):
    """conv -> relu -> batch norm -> max pool -> flatten -> dropout -> linear."""

    def __init__(self):
        self.conv, self.relu, self.norm = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(3)
        self.pool, self.flat, self.drop, self.fc = nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 5)

    def forward(self, x):
        return self.fc(self.drop(self.flat(self.pool(self.norm(self.relu(self.conv(x)))))))


def trained_small(steps=3):
    nn.manual_seed(1)
    ex = Executor(Small(), (1, 8, 8), optimizer=SGD(0.1, momentum=0.9), seed=2)
    rng = np.random.default_rng(3)
    for _ in range(steps):
        ex.train_step(*batch(rng, 6, (1, 8, 8), 5))
    return ex


# --------------------------------------------------------------------------- layers show trained weights

def test_layers_show_the_trained_weights_and_a_second_executor_starts_from_them():
    nn.manual_seed(0)
    model = lenet5(batch_norm=True)
    conv1, bn1 = model.layers[0], model.layers[1]
    initial = np.array(conv1.params["weight"])
    ex = Executor(model, (1, 28, 28), optimizer=Adam(1e-2))
    rng = np.random.default_rng(0)
    x, y = batch(rng, 8, (1, 28, 28), 10)
    for _ in range(3):
        ex.train_step(x, y)
    assert isinstance(conv1.params, LiveArrays)
    assert np.array_equal(conv1.params["weight"], ex.param(conv1, "weight"))  # what the executor holds now
    assert not np.array_equal(conv1.params["weight"], initial)                 # not the initial weights
    assert np.array_equal(bn1.buffers["running_mean"], ex.buffers_of(bn1)["running_mean"])
    assert np.abs(bn1.buffers["running_mean"]).max() > 0                       # trained statistics too
    assert conv1.num_params() == 150 and set(conv1.params) == {"weight"}

    again = Executor(model, (1, 28, 28))  # the same model in a second executor starts where training got
    assert np.array_equal(again.params_flat, ex.params_flat)
    assert np.array_equal(again.predict(x), ex.predict(x))  # weights and running statistics alike

    # a sub-model of trained layers (the case) computes what they compute inside the model
    head = nn.Sequential(*model.layers[:4])
    sub = Executor(head, (1, 28, 28))
    assert_close(sub.predict(x), ex.activations(x, "3")["3"], **tol("training"))

    # the last executor built on a layer is the one it shows; assigning writes into it
    again.load_state_dict({"params": {k: np.zeros_like(v) for k, v in again.state_dict()["params"].items()}})
    assert np.abs(conv1.params["weight"]).max() > 0  # conv1 now belongs to `sub`, trained weights
    conv1.params["weight"] = np.full((6, 1, 5, 5), 0.5, np.float32)
    assert np.all(sub.param(conv1, "weight") == 0.5)
    with pytest.raises(ValueError, match=r"Conv2d#\d+: params\['weight'\] has shape \(6, 1, 5, 5\), got an array "
                                         r"of shape \(6, 5, 5\)"):
        conv1.params["weight"] = np.zeros((6, 5, 5), np.float32)
    with pytest.raises(KeyError, match=r"runs this layer with params \['weight'\] only"):
        conv1.params["bias"] = np.zeros(6, np.float32)
    with pytest.raises(TypeError, match="cannot be removed"):
        del conv1.params["weight"]


class DeviceArray:
    """Stands in for a CuPy array (a layer last trained on the GPU): NumPy refuses to read it
    implicitly, as it refuses a CuPy array; .get() is the one way to the host."""
    __module__ = "cupy"

    def __init__(self, a):
        self.a, self.shape, self.ndim, self.size, self.dtype = a, a.shape, a.ndim, a.size, a.dtype

    def get(self):
        return self.a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


def test_layers_shown_from_a_gpu_executor_are_fetched_into_a_cpu_one():
    lin, norm = nn.Linear(3, 2), nn.BatchNorm1d(2)
    w, mean = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -1.0], np.float32)
    lin.params = {"weight": DeviceArray(w), "bias": DeviceArray(np.ones(2, np.float32))}
    norm.buffers = {"running_mean": DeviceArray(mean), "running_var": DeviceArray(np.ones(2, np.float32))}
    ex = Executor(nn.Sequential(lin, norm), (3,))
    assert np.array_equal(ex.param(lin, "weight"), w) and np.array_equal(ex.buffers_of(norm)["running_mean"], mean)
    assert np.array_equal(lin.params["weight"], w) and isinstance(lin.params["weight"], np.ndarray)


# --------------------------------------------------------------------------- activations

def test_activations_match_a_hand_run_forward_in_eval_mode():
    ex = trained_small()
    rng = np.random.default_rng(4)
    x, _ = batch(rng, 4, (1, 8, 8), 5)
    step, weights, stats = ex.step, ex.params_flat.copy(), ex.state_dict()["buffers"]
    acts = ex.activations(x)
    assert list(acts) == ["conv", "relu", "norm", "pool", "flat", "drop", "fc"]  # forward order, by path
    m = ex.model
    h = conv(x.astype(np.float64), host(ex, m.conv, "weight"), host(ex, m.conv, "bias"), 1)
    expected = {"conv": h, "relu": np.maximum(h, 0)}
    mean, var = (np.array(ex.buffers_of(m.norm)[k], np.float64)[None, :, None, None]
                 for k in ("running_mean", "running_var"))
    gamma, beta = (host(ex, m.norm, k)[None, :, None, None] for k in ("weight", "bias"))
    expected["norm"] = (expected["relu"] - mean) / np.sqrt(var + m.norm.eps) * gamma + beta  # running statistics
    expected["pool"] = expected["norm"].reshape(4, 3, 4, 2, 4, 2).max(axis=(3, 5))
    expected["flat"] = expected["drop"] = expected["pool"].reshape(4, 48)  # dropout: identity in eval mode
    expected["fc"] = expected["flat"] @ host(ex, m.fc, "weight").T + host(ex, m.fc, "bias")
    for name, value in expected.items():
        assert acts[name].dtype == np.float32 and acts[name].shape == value.shape
        assert_close(acts[name], value, **tol("training"), what=name)
    assert_close(acts["fc"], ex.predict(x), **tol("training"))  # the fused graph's logits, to rounding
    # nothing changed: no step, no weights, no running statistics
    assert ex.step == step and np.array_equal(ex.params_flat, weights)
    for k, v in ex.state_dict()["buffers"].items():
        assert np.array_equal(v, stats[k]), k
    # some layers only, in forward order whatever order they are asked in
    some = ex.activations(x, layers=["fc", "norm"])
    assert list(some) == ["norm", "fc"] and np.array_equal(some["fc"], acts["fc"])
    assert list(ex.activations(x, "pool")) == ["pool"]


def test_activations_and_gradients_refuse_what_they_cannot_do():
    ex = trained_small(1)
    x, y = batch(np.random.default_rng(5), 2, (1, 8, 8), 5)
    with pytest.raises(ValueError, match=r"Executor.activations: layers: no layer named 'conv9'; the model's "
                                         r"layers are conv, relu, norm, pool, flat, drop, fc"):
        ex.activations(x, layers=["conv", "conv9"])
    with pytest.raises(TypeError, match=r"Executor.activations: layers must be a layer's name or a non-empty list"):
        ex.activations(x, layers=[])
    with pytest.raises(TypeError, match="Executor.activations: layers must be"):
        ex.activations(x, layers=3)
    with pytest.raises(ValueError, match=r"expected input of shape \(2, 1, 8, 8\), got \(2, 1, 8, 7\)"):
        ex.activations(x[..., :7])
    with pytest.raises(TypeError, match="the input must be float images"):
        ex.activations((x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="Executor.gradients: activations: no layer named 'nope'"):
        ex.gradients(x, y, activations="nope")
    with pytest.raises(ValueError, match="label 7 out of range"):
        ex.gradients(x, np.array([0, 7]))
    # a layer before the first one with parameters gets no gradient: backward stops there
    nn.manual_seed(0)
    pooled = Executor(nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 5)), (1, 8, 8))
    with pytest.raises(ValueError, match=r"Executor.gradients: no gradient reaches \['0'\]"):
        pooled.gradients(x, y, activations=["0", "2"])
    assert list(pooled.gradients(x, y, activations=True)["activations"]) == ["2"]


def test_names_of_layers_used_twice_and_of_joins_made_while_tracing():
    class Twice(Model):
        def __init__(self):
            self.lin, self.relu, self.head = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            h = self.relu(self.lin(x))
            return self.head(self.relu(self.lin(h)) + h)  # lin and relu twice, an Add made here

    ex = Executor(Twice(), (4,), optimizer=SGD(0.0))
    x, y = batch(np.random.default_rng(6), 3, (4,), 2)
    acts = ex.activations(x)
    assert list(acts) == ["lin", "relu", "lin:2", "relu:2", "Add@1", "head"]
    assert_close(acts["Add@1"], acts["relu:2"] + acts["relu"], **tol("training"))
    assert ex.output_names(ex.plan(3, "train"))[:3] == [("lin", "relu"), ("lin:2", "relu:2"), ("Add@1", None)]


# --------------------------------------------------------------------------- gradients

def test_gradients_are_a_train_steps_before_its_update_and_update_nothing():
    """Batch norm in train mode, dropout, fused conv+ReLU, momentum: gradients() gives exactly
    (bitwise) the loss and gradients of the train step that follows it, and changes nothing
    that step would: the weights, the step count (so the dropout masks), the momentum, the
    running statistics."""
    ex = trained_small()
    x, y = batch(np.random.default_rng(7), 6, (1, 8, 8), 5)
    before = ex.state_dict()
    got = ex.gradients(x, y, activations=True)
    after = ex.state_dict()
    assert after["step"] == before["step"] == 3
    for part in ("params", "buffers"):
        for k in before[part]:
            assert np.array_equal(after[part][k], before[part][k]), k
    for k in before["optimizer"]["velocity"]:
        assert np.array_equal(after["optimizer"]["velocity"][k], before["optimizer"]["velocity"][k]), k
    assert _same(got, ex.gradients(x, y, activations=True))  # twice the same: nothing moved

    loss = float(ex.train_step(x, y))
    assert loss == got["loss"]  # bitwise
    assert list(got["params"]) == ["conv.weight", "conv.bias", "norm.weight", "norm.bias", "fc.weight", "fc.bias"]
    for name, layer, key in param_names(ex):
        assert np.array_equal(ex.grad(layer, key), got["params"][name]), name
    assert list(got["activations"]) == ["conv", "relu", "norm", "pool", "flat", "drop", "fc"]
    # through dropout with the step's mask (its seed is kept on the bound node); d(loss)/d(logits)
    # is (softmax - onehot) / N, whose rows sum to 0
    drop = ex.plan(6, "train").bound[4]
    assert drop.layer is ex.model.drop
    mask = dropout_mask((6, 48), 0.5, drop.seed)
    assert 0 < mask.sum() < mask.size
    assert_close(got["activations"]["flat"], got["activations"]["drop"] * mask / 0.5, **tol("training"))
    assert_close(got["activations"]["fc"].sum(axis=1), np.zeros(6), atol=1e-7, rtol=0)
    assert ex.step == 4 and not np.array_equal(ex.state_dict()["params"]["0.Conv2d.weight"],
                                               before["params"]["0.Conv2d.weight"])


def test_gradients_leave_frozen_layers_out_and_layers_follow_a_new_layout():
    """A frozen layer has no gradient (train_step computes none), so gradients() lists only the
    trainable parameters; freezing lays the flat arrays out anew, and the layers' params still
    show the executor's live weights afterwards."""
    ex = trained_small(1)
    x, y = batch(np.random.default_rng(10), 6, (1, 8, 8), 5)
    ex.model.conv.trainable = False
    got = ex.gradients(x, y, activations=True)  # the first plan after freezing: a new layout
    assert list(got["params"]) == ["norm.weight", "norm.bias", "fc.weight", "fc.bias"]
    assert list(got["activations"]) == ["norm", "pool", "flat", "drop", "fc"]  # backward stops after the conv
    conv_weight = np.array(ex.model.conv.params["weight"])
    assert float(ex.train_step(x, y)) == got["loss"]
    for name, layer, key in param_names(ex):
        if layer.trainable:
            assert np.array_equal(ex.grad(layer, key), got["params"][name]), name
    assert np.array_equal(ex.model.conv.params["weight"], conv_weight)  # frozen: not moved by the step
    for layer in (ex.model.conv, ex.model.fc):
        assert np.shares_memory(layer.params["weight"], ex.params_flat)  # the new flat array, not the old one
    assert not np.array_equal(ex.model.fc.params["weight"], got["params"]["fc.weight"])


def _same(a, b):
    return (a["loss"] == b["loss"] and all(np.array_equal(a["params"][k], b["params"][k]) for k in a["params"])
            and all(np.array_equal(a["activations"][k], b["activations"][k]) for k in a["activations"]))


def test_gradients_match_a_hand_run_backward():
    """linear -> relu -> linear, cross-entropy: every gradient by the chain rule, in float64.
    The first linear and its ReLU run fused; the linear's output still gets its own gradient."""
    nn.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ex = Executor(model, (6,), optimizer=SGD(0.1))
    assert ex.output_names(ex.plan(5, "train"))[0] == ("0", "1")  # fused: one node, two outputs
    x, y = batch(np.random.default_rng(8), 5, (6,), 3)
    got = ex.gradients(x, y, activations=True)
    w1, b1, w2, b2 = (host(ex, layer, k) for layer in (model.layers[0], model.layers[2]) for k in ("weight", "bias"))
    pre = x @ w1.T + b1
    h = np.maximum(pre, 0)
    loss, dlogits = softmax_xent_grad(h @ w2.T + b2, y)
    dh = dlogits @ w2
    dpre = dh * (pre > 0)
    expected = {"0.weight": dpre.T @ x, "0.bias": dpre.sum(0), "2.weight": dlogits.T @ h, "2.bias": dlogits.sum(0)}
    assert math.isclose(got["loss"], loss, rel_tol=1e-5)
    for name, value in expected.items():
        assert_close(got["params"][name], value, **tol("training"), what=name)
    for name, value in {"0": dpre, "1": dh, "2": dlogits}.items():
        assert_close(got["activations"][name], value, **tol("training"), what=name)


def test_conv_gradients_match_pytorch_including_every_activation():
    torch = pytest.importorskip("torch")
    nn.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(3), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(48, 5))
    ex = Executor(model, (1, 8, 8))  # no optimizer needed to look at gradients
    x, y = batch(np.random.default_rng(9), 4, (1, 8, 8), 5)
    got = ex.gradients(x, y, activations=True)
    p = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in
         ((f"{i}.{k}", model.layers[i].params[k]) for i in (0, 2, 5) for k in ("weight", "bias"))}
    F = torch.nn.functional
    outs = [F.conv2d(torch.from_numpy(x), p["0.weight"], p["0.bias"], padding=1)]
    outs.append(F.relu(outs[-1]))
    outs.append(F.batch_norm(outs[-1], None, None, p["2.weight"], p["2.bias"], training=True))
    outs.append(F.max_pool2d(outs[-1], 2))
    outs.append(outs[-1].flatten(1))
    outs.append(outs[-1] @ p["5.weight"].T + p["5.bias"])
    for o in outs:
        o.retain_grad()
    loss = F.cross_entropy(outs[-1], torch.from_numpy(y))
    loss.backward()
    assert math.isclose(got["loss"], loss.item(), rel_tol=1e-5)
    for k, t in p.items():
        assert_close(got["params"][k], t.grad.numpy(), **tol("training"), what=k)
    for i, o in enumerate(outs):
        assert_close(got["activations"][str(i)], o.grad.numpy(), **tol("training"), what=f"d/d output of {i}")


# --------------------------------------------------------------------------- per-batch loss in fit

def _make(seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Dropout(0.3), nn.Linear(4 * 6 * 6, 10))
    return Executor(model, (1, 28, 28), optimizer=Adam(1e-2), seed=seed)


def test_fit_calls_on_batch_and_keeps_the_loss_of_every_batch(tmp_path):
    split = synthetic(96, (1, 28, 28), 10, seed=0)
    seen = []
    ex = _make()
    h = fit(ex, DataLoader(split.x, split.y, 16, seed=2), epochs=3, schedule=Cosine(3), progress=False,
            log=lambda s: None, on_batch=lambda step, loss, lr: seen.append((step, loss, lr)))
    assert [s for s, _, _ in seen] == list(range(1, 19))  # 96 / 16 = 6 batches a epoch, steps 1..18
    assert h["batch_loss"] == [loss for _, loss, _ in seen]
    assert [lr for _, _, lr in seen] == [Cosine(3)(1e-2, e + i / 6) for e in range(3) for i in range(6)]
    for e in range(3):  # equal batches: the epoch's loss is the mean of its batches'
        assert math.isclose(h["loss"][e], np.mean(h["batch_loss"][6 * e:6 * e + 6]), rel_tol=1e-12)
    with pytest.raises(TypeError, match="fit: on_batch must be a function on_batch"):
        fit(ex, DataLoader(split.x, split.y, 16), epochs=1, on_batch=3, progress=False)

    # the per-batch losses survive a checkpoint: a resumed run has the uninterrupted one's
    path = str(tmp_path / "c.ckpt")
    fit(_make(), DataLoader(split.x, split.y, 16, seed=2), epochs=2, schedule=Cosine(3), checkpoint=path,
        progress=False, log=lambda s: None)
    resumed = fit(_make(seed=5), DataLoader(split.x, split.y, 16, seed=2), epochs=3, schedule=Cosine(3),
                  checkpoint=path, resume=True, progress=False, log=lambda s: None)
    assert resumed["batch_loss"] == h["batch_loss"]  # exactly
