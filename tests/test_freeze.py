"""Freezing: layer.trainable = False, or engine.nn.freeze(model, upto=path).

A frozen layer's parameters get no gradient, no update and no weight decay (they sit past
the optimizer's slice of the flat arrays); backward stops at the first trainable layer (no
node upstream of it runs backward or has gradient buffers); a frozen batch norm normalises
with its running statistics, exactly as in eval mode, and leaves them alone. Checked against
PyTorch with requires_grad=False (and .eval() on frozen batch norm).
"""
from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.executor import Executor
from engine.graph import summary
from engine.models import lenet5, resnet8
from engine.optim import SGD, AdamW
from engine.tolerances import assert_close, tol

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 1, 28, 28)).astype(np.float32)
Y = RNG.integers(0, 10, 8)


def lenet(seed=0, **kw):
    nn.manual_seed(seed)
    return lenet5(**kw)


def test_freeze_upto_a_path_freezes_every_layer_before_it_and_says_which():
    model = lenet()
    frozen = nn.freeze(model, "3")
    assert frozen == ["0", "1", "2", "3"]
    assert [layer.trainable for layer in model.layers] == [False] * 4 + [True] * 8
    nn.unfreeze(model)
    assert all(layer.trainable for layer in model.layers)
    res = resnet8()
    frozen = nn.freeze(res, "layer2")  # a block: all of its layers, and everything before
    assert frozen[0] == "conv1" and frozen[-1] == "layer2.0.downsample.1" and "layer3.0.conv1" not in frozen
    assert res.layer3.layers[0].conv1.trainable and res.fc.trainable and not res.bn1.trainable
    with pytest.raises(ValueError, match=r"freeze: the model has no layer or block 'layer9'; its layers are conv1, bn1"):
        nn.freeze(res, "layer9")
    with pytest.raises(TypeError, match="freeze: expected a Model"):
        nn.freeze(nn.Linear(2, 2), "0")


def test_summary_counts_trainable_and_frozen_parameters():
    model = lenet()
    nn.freeze(model, "5")
    text = summary(model, (1, 28, 28))
    conv = 6 * 25 + 6 + 16 * 6 * 25 + 16
    assert f"Trainable params: {61706 - conv:,}" in text and f"Frozen params: {conv:,}" in text
    assert "156 (frozen)" in text and "(frozen)" not in text.split("Flatten")[1]


@pytest.mark.parametrize("optimizer", [lambda: SGD(0.1, momentum=0.9, weight_decay=0.1, l1=1e-3),
                                       lambda: AdamW(1e-2, weight_decay=0.5)])
def test_frozen_parameters_keep_every_bit_and_the_rest_trains(optimizer):
    model = lenet()
    nn.freeze(model, "5")
    ex = Executor(model, (1, 28, 28), optimizer=optimizer())
    before = {k: v.copy() for k, v in ex.named_parameters().items()}
    for _ in range(3):
        ex.train_step(X, Y)
    after = ex.named_parameters()
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        assert changed == (int(name.split(".")[0]) > 5), name  # decay would move a frozen weight too
    assert ex.num_trainable_params() == 61706 - 2572 and ex.trainable_end < ex.params_flat.size


def test_backward_stops_at_the_first_trainable_layer(monkeypatch):
    calls = []
    for cls in (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.ReLU, nn.Flatten):
        original = cls.backward
        monkeypatch.setattr(cls, "backward", lambda self, bk, n, original=original: (calls.append(n.node.index),
                                                                                      original(self, bk, n)))
    model = lenet()
    nn.freeze(model, "5")
    ex = Executor(model, (1, 28, 28), optimizer=SGD(0.1))
    ex.train_step(X, Y)
    plan = ex.plan(len(X), "train")
    first_trainable = next(b.node.index for b in plan.bound if b.layer is model.layers[7])
    assert sorted(set(calls)) == [b.node.index for b in plan.bound[first_trainable:-1]]  # the loss has none
    # no gradient buffer for anything the frozen trunk makes: it was never planned
    grads = {key[1] for key in _planned_keys(ex, plan) if key[0] == "grad"}
    assert all(plan.graph.values[v].producer.index >= first_trainable for v in grads)
    assert plan.arena_elements < Executor(lenet(), (1, 28, 28), optimizer=SGD(0.1)).plan(8, "train").arena_elements


def _planned_keys(ex, plan):
    from engine.executor import fuse_relu, lifetimes, trace_step, values_needing_grad
    g = trace_step(ex, len(X), "train")
    fused = fuse_relu(g)
    return lifetimes(g, fused, values_needing_grad(g, True))


def test_training_with_a_frozen_trunk_follows_torch():
    """LeNet with its convs frozen, SGD with momentum and weight decay, against the torch twin
    whose convs have requires_grad=False and stay out of the optimizer."""
    torch = pytest.importorskip("torch")
    from engine.models import torch_twin
    model = lenet()
    twin = torch_twin("lenet")
    with torch.no_grad():
        for ours, theirs in zip([layer for layer in model.layers if layer.params],
                                [m for m in twin if list(m.parameters())]):
            theirs.weight.copy_(torch.from_numpy(ours.params["weight"]))
            theirs.bias.copy_(torch.from_numpy(ours.params["bias"]))
    nn.freeze(model, "5")
    for p in list(twin[0].parameters()) + list(twin[3].parameters()):
        p.requires_grad_(False)
    ex = Executor(model, (1, 28, 28), optimizer=SGD(0.05, momentum=0.9, weight_decay=1e-2))
    opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.05, momentum=0.9, weight_decay=1e-2)
    for step in range(4):
        loss = float(ex.train_step(X, Y))
        opt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)), torch.from_numpy(Y))
        tloss.backward()
        opt.step()
        assert_close(loss, tloss.item(), **tol("training"), what=f"loss at step {step}")
    for name, value in ex.named_parameters().items():
        index, key = name.split(".")
        assert_close(value, getattr(twin[int(index)], key).detach().numpy(), **tol("training"), what=name)


def test_frozen_batch_norm_is_eval_batch_norm_and_keeps_its_statistics():
    """A frozen batch norm after a trainable conv: in training its output is bit for bit the
    eval-mode output, its running statistics do not move, and the conv's gradient is torch's
    through an eval-mode (frozen) batch norm."""
    torch = pytest.importorskip("torch")
    nn.manual_seed(3)
    conv, bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
    bn.params["weight"][:] = RNG.uniform(0.5, 2, 4)
    bn.params["bias"][:] = RNG.standard_normal(4)
    bn.buffers["running_mean"][:] = RNG.standard_normal(4)
    bn.buffers["running_var"][:] = RNG.uniform(0.5, 2, 4)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    bn.trainable = False
    x, y = RNG.standard_normal((5, 1, 6, 6)).astype(np.float32), RNG.integers(0, 3, 5)
    ex = Executor(model, (1, 6, 6), optimizer=SGD(0.0))  # lr 0: the weights stay, the gradients are computed
    stats = {k: v.copy() for k, v in ex.named_buffers().items()}
    ex.train_step(x, y)
    train_logits = ex.plan(5, "train").logits.copy()
    assert np.array_equal(train_logits, ex.predict(x)), "frozen batch norm in training = eval mode, bit for bit"
    assert all(np.array_equal(stats[k], v) for k, v in ex.named_buffers().items())
    t_conv, t_bn = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
    t_lin = torch.nn.Linear(144, 3)
    with torch.no_grad():
        for t, ours in ((t_conv, conv), (t_bn, bn), (t_lin, model.layers[4])):
            for k, v in ours.params.items():
                getattr(t, k).copy_(torch.from_numpy(v))
        t_bn.running_mean.copy_(torch.from_numpy(bn.buffers["running_mean"]))
        t_bn.running_var.copy_(torch.from_numpy(bn.buffers["running_var"]))
    t_bn.eval()
    out = t_lin(torch.relu(t_bn(t_conv(torch.from_numpy(x)))).flatten(1))
    assert_close(train_logits, out.detach().numpy(), **tol("batchnorm"), what="logits through a frozen batch norm")
    torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).backward()
    assert_close(ex.grad(conv, "weight"), t_conv.weight.grad.numpy(), **tol("training"), what="conv weight grad")
    from engine.reference.batchnorm import batch_norm_forward
    h = ex.bk.conv2d_forward(x, ex.param(conv, "weight"), ex.param(conv, "bias"), (1, 1), (1, 1))
    expected, _, _ = batch_norm_forward(h, bn.params["weight"], bn.params["bias"], bn.buffers["running_mean"],
                                        bn.buffers["running_var"], False, 0.1, 1e-5)
    hidden = ex.plan(5, "train").bound[1].y  # batch norm + ReLU, fused
    assert_close(hidden, np.maximum(expected, 0), **tol("batchnorm"), what="frozen batch norm vs the eval reference")


def test_freezing_after_the_executor_was_built_lays_the_parameters_out_again():
    model = lenet()
    ex = Executor(model, (1, 28, 28), optimizer=SGD(0.1, momentum=0.9))
    ex.train_step(X, Y)
    velocity = ex._state_view("velocity", model.layers[0], "weight").copy()
    nn.freeze(model, "5")
    before = {k: v.copy() for k, v in ex.named_parameters().items()}
    ex.train_step(X, Y)
    assert np.array_equal(ex.named_parameters()["0.weight"], before["0.weight"])
    assert not np.array_equal(ex.named_parameters()["7.weight"], before["7.weight"])
    assert np.array_equal(ex._state_view("velocity", model.layers[0], "weight"), velocity)  # kept, unused
    nn.unfreeze(model)
    ex.train_step(X, Y)
    assert not np.array_equal(ex.named_parameters()["0.weight"], before["0.weight"])
    assert ex.trainable_end == ex.params_flat.size


def test_an_unfrozen_model_trains_bit_for_bit_as_before_freezing_existed():
    """Freezing and unfreezing again gives the layout and the results of never freezing."""
    a, b = lenet(), lenet()
    nn.freeze(b, "11")
    nn.unfreeze(b)
    ex_a, ex_b = (Executor(m, (1, 28, 28), optimizer=AdamW(1e-3)) for m in (a, b))
    for _ in range(2):
        assert float(ex_a.train_step(X, Y)) == float(ex_b.train_step(X, Y))
    assert np.array_equal(ex_a.params_flat, ex_b.params_flat)


def test_nothing_to_train_is_an_error():
    model = lenet()
    nn.freeze(model, "11")
    ex = Executor(model, (1, 28, 28), optimizer=SGD(0.1))
    with pytest.raises(ValueError, match="Executor.train_step: nothing to train: every layer with parameters is frozen"):
        ex.train_step(X, Y)
    assert ex.predict(X).shape == (8, 10)  # a frozen model still predicts
