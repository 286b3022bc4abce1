"""pretrain.training.lamb.Lamb against the LAMB update rule of You et al., ICLR 2020 (arXiv:1904.00962),
Algorithm 2, restated independently below with plain float64 tensor math, one tensor at a time."""

from __future__ import annotations

import copy
import io
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from pretrain.training.lamb import Lamb

F64 = torch.float64


def reference_lamb(w0, grads, lr, beta1, beta2, eps, wd, lo, hi, bias_correction=True):
    """Algorithm 2 for one tensor ("layer"): returns the weights after each step and how many
    steps had φ(‖w‖) clamped (so callers can prove the clamp was exercised)."""
    w = w0.clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    history, clamped = [], 0
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t) if bias_correction else m
        v_hat = v / (1 - beta2**t) if bias_correction else v
        r = m_hat / (torch.sqrt(v_hat) + eps) + wd * w
        w_norm = float(torch.sqrt((w * w).sum()))
        r_norm = float(torch.sqrt((r * r).sum()))
        if w_norm == 0.0 or r_norm == 0.0:
            ratio = 1.0
        else:
            phi = min(max(w_norm, lo), hi)
            clamped += phi != w_norm
            ratio = phi / r_norm
        w = w - lr * ratio * r
        history.append(w.clone())
    return history, clamped


def _params(gen):
    # Norms span well below and above 10 so the default max_trust=10 clamp is hit.
    return {
        "matrix": torch.randn(8, 16, generator=gen, dtype=F64) * 3.0,  # ‖w‖ ≈ 34
        "vector": torch.randn(16, generator=gen, dtype=F64) * 0.1,  # ‖w‖ ≈ 0.4
        "bias": torch.randn(16, generator=gen, dtype=F64) * 0.05,
        "norm_weight": 1.0 + 0.1 * torch.randn(16, generator=gen, dtype=F64),  # ‖w‖ ≈ 4
    }


@pytest.mark.parametrize(
    "bias_correction, min_trust, max_trust",
    [(True, 0.0, 10.0), (False, 0.0, 10.0), (True, 1.0, 3.0)],
)
def test_matches_algorithm_2_over_several_steps(bias_correction, min_trust, max_trust):
    gen = torch.Generator().manual_seed(1234)
    init = _params(gen)
    steps = 6
    grads = {k: [torch.randn(v.shape, generator=gen, dtype=F64) * (k == "matrix" and 5.0 or 0.3)
                 for _ in range(steps)] for k, v in init.items()}
    decayed = dict(lr=0.02, betas=(0.9, 0.999), weight_decay=0.01)
    no_decay = dict(lr=0.005, betas=(0.8, 0.99), weight_decay=0.0)
    group_of = {"matrix": decayed, "vector": decayed, "bias": no_decay, "norm_weight": no_decay}

    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = Lamb(
        [
            {"params": [params["matrix"], params["vector"]], **decayed},
            {"params": [params["bias"], params["norm_weight"]], **no_decay},
        ],
        eps=1e-6,
        bias_correction=bias_correction,
        min_trust=min_trust,
        max_trust=max_trust,
    )
    got = {k: [] for k in params}
    for t in range(steps):
        for k, p in params.items():
            p.grad = grads[k][t].clone()
        opt.step()
        for k, p in params.items():
            got[k].append(p.detach().clone())

    total_clamped = 0
    for k, w0 in init.items():
        hp = group_of[k]
        want, clamped = reference_lamb(
            w0, grads[k], hp["lr"], *hp["betas"], 1e-6, hp["weight_decay"], min_trust, max_trust,
            bias_correction=bias_correction,
        )
        total_clamped += clamped
        for t in range(steps):
            torch.testing.assert_close(got[k][t], want[t], rtol=0, atol=1e-10, msg=f"{k} step {t + 1}")
        assert not torch.equal(want[-1], w0)
    # Without this the clamp branch could be wrong and the comparison still pass.
    assert total_clamped > 0


def test_weight_decay_is_per_group():
    # w not parallel to r: otherwise the trust ratio normalises λ·w away and both agree.
    w0 = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=F64)
    g = torch.ones(4, dtype=F64)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = Lamb([{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.1)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    for p, wd in ((a, 0.1), (b, 0.0)):
        want, _ = reference_lamb(w0, [g], 0.1, 0.9, 0.999, 1e-6, wd, 0.0, 10.0)
        torch.testing.assert_close(p.detach(), want[0], rtol=0, atol=1e-12)
    assert not torch.allclose(a.detach(), b.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("min_trust", [0.0, 0.5])
def test_zero_weight_norm_uses_trust_ratio_one(min_trust):
    # A zero tensor (e.g. a zero-initialised bias): φ(0) would give 0 or min_trust/‖r‖;
    # the rule says ratio 1, so step 1 is exactly lr·r with r = g/(|g|+ε) after bias correction.
    g = torch.tensor([0.5, -2.0, 3.0, -1e-3], dtype=F64)
    p = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    opt = Lamb([p], lr=0.01, weight_decay=0.01, min_trust=min_trust)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -0.01 * g / (g.abs() + 1e-6), rtol=0, atol=1e-15)


def test_zero_update_norm_leaves_weights_finite_and_unchanged():
    # ‖r‖ = 0 (zero gradient, no decay) must not turn 0/0 into NaN weights.
    w0 = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.zeros(3, dtype=F64)
    opt.step()
    assert torch.equal(p.detach(), w0)


def test_minimises_least_squares():
    gen = torch.Generator().manual_seed(7)
    A = torch.randn(30, 6, generator=gen, dtype=F64)
    b = A @ torch.randn(6, generator=gen, dtype=F64) + 0.01 * torch.randn(30, generator=gen, dtype=F64)
    x_opt = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)

    def loss_of(x):
        return 0.5 * ((A @ x - b) ** 2).sum()

    # Start away from 0: LAMB's steps are relative to ‖x‖, as they would be from a weight init.
    x = torch.nn.Parameter(0.1 * torch.randn(6, generator=gen, dtype=F64))
    steps = 200
    opt = Lamb([x], lr=0.05, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    start = float(loss_of(x.detach()))

    def closure():
        opt.zero_grad()
        loss = loss_of(x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
        sched.step()
    best = float(loss_of(x_opt))
    assert float(loss_of(x.detach())) - best < 1e-4 * (start - best)
    assert float((x.detach() - x_opt).norm() / x_opt.norm()) < 1e-2


def _model_and_grads(seed, steps):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4)).to(F64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    grads = [[torch.randn(p.shape, generator=gen, dtype=F64) for p in model.parameters()] for _ in range(steps)]
    return model, grads


def _run(model, opt, grads):
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()


def _groups(model):
    decay = [p for n, p in model.named_parameters() if n == "0.weight"]
    rest = [p for n, p in model.named_parameters() if n != "0.weight"]
    return [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]


def test_state_dict_round_trip_continues_identically():
    model, grads = _model_and_grads(seed=3, steps=6)
    opt = Lamb(_groups(model), lr=0.01)
    _run(model, opt, grads[:3])

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(saved["model"])
    resumed_opt = Lamb(_groups(resumed), lr=123.0)  # hyperparameters must come from the checkpoint
    resumed_opt.load_state_dict(saved["opt"])
    fresh = copy.deepcopy(resumed)
    fresh_opt = Lamb(_groups(fresh), lr=0.01)

    _run(model, opt, grads[3:])
    _run(resumed, resumed_opt, grads[3:])
    _run(fresh, fresh_opt, grads[3:])

    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert all(s["step"] == 6 for s in resumed_opt.state.values())
    # The restored moments and step count matter: restarting them changes the trajectory.
    assert not all(torch.allclose(a, c, rtol=0, atol=1e-10) for a, c in zip(model.parameters(), fresh.parameters()))


def test_parameters_without_grad_are_skipped():
    a = torch.nn.Parameter(torch.ones(3, dtype=F64))
    b = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = Lamb([a, b], lr=0.1)
    a.grad = torch.ones(3, dtype=F64)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3, dtype=F64)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3, dtype=F64))

    # A step where `a` got no gradient must not advance its bias-correction clock.
    a.grad = None
    b.grad = torch.ones(3, dtype=F64)
    opt.step()
    assert opt.state[a]["step"] == 1 and opt.state[b]["step"] == 1


def test_sparse_gradients_are_rejected():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = Lamb(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1.0), dict(betas=(1.0, 0.999)), dict(eps=0.0), dict(weight_decay=-0.1),
     dict(min_trust=2.0, max_trust=1.0)],
)
def test_bad_hyperparameters_fail_at_construction(kwargs):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="Lamb"):
        Lamb([p], **kwargs)
    with pytest.raises(ValueError, match="Lamb"):
        Lamb([{"params": [p], **kwargs}])


_DEEPSPEED_SCRIPT = textwrap.dedent(
    """
    import copy, importlib, torch, deepspeed
    from pretrain.training.lamb import Lamb
    # Not `import deepspeed.comm.torch as m`: that resolves to the torch package, which
    # deepspeed.comm re-exports under the same attribute name.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    # DeepSpeed's CPU backend compiles a shared-memory all-reduce extension on first use
    # (~40 s on 2 cores); it is only a speed-up and DeepSpeed runs without it when the
    # builder is unavailable, which is the path taken here.
    ds_comm_torch.build_shm_op = lambda: None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    twin = copy.deepcopy(model)
    opt = Lamb(model.parameters(), lr=0.01)
    engine, ds_opt, _, _ = deepspeed.initialize(
        model=model, optimizer=opt,
        # DeepSpeed clips gradients at norm 1.0 unless told otherwise; off, so the twin
        # below only has to reproduce the optimizer.
        config={"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "gradient_clipping": 0.0},
    )
    assert ds_opt is opt, type(ds_opt)
    twin_opt = Lamb(twin.parameters(), lr=0.01)
    for _ in range(3):
        x = torch.randn(8, 6)
        engine.backward(engine(x).pow(2).mean())
        engine.step()
        twin_opt.zero_grad()
        twin(x).pow(2).mean().backward()
        twin_opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert all(s["step"] == 3 for s in opt.state.values())
    # bf16 without ZeRO (what the trainer allows LAMB with): DeepSpeed keeps one fp32 master
    # per parameter, so the trust ratio still sees whole tensors, not flat partitions.
    bf = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    shapes = [tuple(p.shape) for p in bf.parameters()]
    bf_opt = Lamb(bf.parameters(), lr=0.01)
    deepspeed.initialize(model=bf, optimizer=bf_opt, config={"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                                                             "bf16": {"enabled": True}})
    masters = [p for g in bf_opt.param_groups for p in g["params"]]
    assert [tuple(p.shape) for p in masters] == shapes and all(p.dtype == torch.float32 for p in masters), masters
    print("ENGINE_STEPPED_WITH_LAMB")
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deepspeed_engine_accepts_and_steps_lamb():
    # A subprocess keeps DeepSpeed's process-global distributed state out of the other tests.
    env = dict(
        os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _DEEPSPEED_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "ENGINE_STEPPED_WITH_LAMB" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "built successfully" not in proc.stdout  # the slow extension build was really avoided
