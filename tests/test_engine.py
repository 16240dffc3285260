"""The fast step engine computes the plain path's step: same weights, alpha and states."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bayesnas_core.engine import StepEngine, engine_supported
from bayesnas_core.search import build_arch_update, build_supernet, search_step
from bayesnas_core.spaces.nb201 import CELL_IMPLS

from conftest import make_tiny_config, make_tiny_data


def _setup(tmp_path, method: str, fused: bool, dtype: str, order: int = 1):
    cfg = make_tiny_config(tmp_path, method=method, mc_samples=3, batched_mc=fused, fused_cell=fused,
                           order=order)
    cfg.dtype = dtype
    torch.manual_seed(0)
    model = build_supernet(cfg, 4, 1)
    s = cfg.search
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                            nesterov=True, weight_decay=s.w_weight_decay)
    arch = build_arch_update(cfg, model, 64, torch.Generator().manual_seed(5))
    return cfg, model, w_opt, arch


def _batches(dtype: torch.dtype, steps: int):
    data = make_tiny_data(n=16 * steps).to(dtype)
    return [((data.train.x[i * 16:(i + 1) * 16], data.train.y[i * 16:(i + 1) * 16]),
             (data.valid.x[i * 16:(i + 1) * 16], data.valid.y[i * 16:(i + 1) * 16]))
            for i in range(steps)]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("method", ["darts", "balenas"])
def test_engine_step_equals_plain_step(tmp_path, method, order) -> None:
    """Five steps, float64, with a learning-rate change halfway: the engine (folded cells,
    on-device statistics) and the plain path (unfused cells, torch.optim, one pass per
    Monte-Carlo sample, same noise) agree to 1e-9 in every weight, alpha and optimizer
    state (equal up to round-off), and in the mean statistics to float32 round-off (the
    plain Vadam path reports its loss as a float32 tensor). grad_clip=1 is below the
    gradient norms here (about 3), so clipping acts in every step. Second order: the
    unrolled gradient (look-ahead with the momentum buffers, the finite-difference term,
    the look-ahead rate following the lr change), architecture step first."""
    _, pm, pw, pa = _setup(tmp_path, method, fused=False, dtype="float64", order=order)
    _, fm, fw, fa = _setup(tmp_path, method, fused=True, dtype="float64", order=order)
    fm.load_state_dict(pm.state_dict())
    engine = StepEngine(fm, fw, fa.optimizer, grad_clip=1.0, order=order)
    stats = []
    for i, (tb, vb) in enumerate(_batches(torch.float64, 5)):
        if i == 3:
            for opt in (pw, fw):
                opt.param_groups[0]["lr"] = 0.01
        stats.append(search_step(pm, pw, pa, tb, vb, grad_clip=1.0))
        engine.step(tb, vb)
    engine.sync_state()
    mean = engine.epoch_stats()
    for k, v in mean.items():  # Vadam.step reports its mean loss as a float32 tensor
        assert v == pytest.approx(sum(s[k] for s in stats) / len(stats), rel=1e-7, abs=1e-12)
    for p, q in zip(pm.parameters(), fm.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
    for p, q in zip(pw.param_groups[0]["params"], fw.param_groups[0]["params"]):
        torch.testing.assert_close(fw.state[q]["momentum_buffer"], pw.state[p]["momentum_buffer"],
                                   rtol=1e-9, atol=1e-12)
    ps, fs = pa.optimizer.state[pm.alpha], fa.optimizer.state[fm.alpha]
    assert int(fs["step"]) == int(ps["step"]) == 5
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(fs[key], ps[key], rtol=1e-9, atol=1e-15)
    assert not torch.allclose(pm.alpha, _setup(tmp_path, method, False, "float64")[1].alpha)


def test_engine_state_round_trips_through_the_plain_optimizers(tmp_path) -> None:
    """After sync_state, the optimizers' state_dicts load into fresh optimizers, and an
    engine built on them continues exactly where the first one stopped."""
    _, model, w_opt, arch = _setup(tmp_path, "balenas", fused=True, dtype="float32")
    batches = _batches(torch.float32, 4)
    engine = StepEngine(model, w_opt, arch.optimizer, grad_clip=5.0)
    for tb, vb in batches[:2]:
        engine.step(tb, vb)
    engine.sync_state()
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(w_opt.state_dict()),
             copy.deepcopy(arch.optimizer.state_dict()), arch.optimizer.generator.get_state())
    for tb, vb in batches[2:]:
        engine.step(tb, vb)
    _, m2, w2, a2 = _setup(tmp_path, "balenas", fused=True, dtype="float32")
    m2.load_state_dict(saved[0])
    w2.load_state_dict(saved[1])
    a2.optimizer.load_state_dict(saved[2])
    a2.optimizer.generator.set_state(saved[3])
    e2 = StepEngine(m2, w2, a2.optimizer, grad_clip=5.0)
    for tb, vb in batches[2:]:
        e2.step(tb, vb)
    assert torch.equal(m2.alpha, model.alpha)
    assert torch.equal(a2.optimizer.state[m2.alpha]["exp_avg_sq"], arch.optimizer.state[model.alpha]["exp_avg_sq"])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("method", ["darts", "balenas"])
def test_engine_with_compiled_cells_equals_eager_engine(tmp_path, monkeypatch, method, order) -> None:
    """Compiled cells in the engine (dynamo and AOTAutograd without code generation, so
    seconds on a CPU; inductor itself is covered by the ``compile`` tests): three float64
    steps end where the eager engine's do, and the architecture step's constant weights
    get their own requires_grad back, a weight frozen before it staying frozen."""
    from torch._dynamo.utils import counters

    from bayesnas_core.spaces import nb201

    torch._dynamo.reset()
    compiled = torch.compile(nb201._cell_forward, backend="aot_eager", dynamic=False)
    monkeypatch.setattr(nb201, "_compiled_cell_forward", lambda: compiled)
    _, em, ew, ea = _setup(tmp_path, method, fused=True, dtype="float64", order=order)
    _, cm, cw, ca = _setup(tmp_path, method, fused=True, dtype="float64", order=order)
    cm.load_state_dict(em.state_dict())
    cm.compile_cells = True
    eager = StepEngine(em, ew, ea.optimizer, grad_clip=1.0, order=order)
    engine = StepEngine(cm, cw, ca.optimizer, grad_clip=1.0, order=order)
    for tb, vb in _batches(torch.float64, 3):
        eager.step(tb, vb)
        engine.step(tb, vb)
    assert counters["stats"]["unique_graphs"] >= 2  # weight step and architecture step
    for p, q in zip(em.parameters(), cm.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
    assert all(p.requires_grad for p in engine.weights)
    engine.weights[0].requires_grad_(False)
    with engine._weights_constant():
        assert not any(p.requires_grad for p in engine.weights)
    assert not engine.weights[0].requires_grad and all(p.requires_grad for p in engine.weights[1:])
    torch._dynamo.reset()


class _HostData(TorchDispatchMode):
    """Records the tensors built from Python data (on CUDA: a copy from host memory) and
    the values read back to Python (``.item()``, ``bool(t)``: on CUDA a sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("lift_fresh", "_local_scalar_dense"):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("impl", CELL_IMPLS)
@pytest.mark.parametrize("method", ["darts", "balenas"])
def test_engine_step_has_no_host_round_trip(tmp_path, method, impl, order) -> None:
    """A CUDA graph cannot capture a copy from host memory or a read-back, so the
    captured step (cells of every implementation, mixing weights, optimizer updates, and
    in second order the unrolled gradient with its finite-difference radius) builds no
    tensor from Python data and reads no value back."""
    cfg, model, w_opt, arch = _setup(tmp_path, method, fused=True, dtype="float32", order=order)
    model.cell_impl = impl
    engine = StepEngine(model, w_opt, arch.optimizer, grad_clip=5.0, order=order)
    (tb, vb), = _batches(torch.float32, 1)
    engine.step(tb, vb)  # the static buffers exist from here on
    with _HostData() as record:
        engine._compute()
    assert record.seen == []
    with _HostData() as record:  # the recorder sees both
        torch.tensor([0, 1]).sum().item()
    assert record.seen == ["aten.lift_fresh.default", "aten._local_scalar_dense.default"]


def test_engine_rejects_what_it_does_not_implement(tmp_path) -> None:
    _, model, w_opt, arch = _setup(tmp_path, "darts", fused=True, dtype="float32")
    with pytest.raises(ValueError, match="CUDA"):
        StepEngine(model, w_opt, arch.optimizer, grad_clip=5.0, cuda_graph=True)
    plain_sgd = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov"):
        StepEngine(model, plain_sgd, arch.optimizer, grad_clip=5.0)
    with pytest.raises(TypeError):
        StepEngine(model, w_opt, torch.optim.SGD([model.alpha], lr=0.1), grad_clip=5.0)
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(6, 5))])
    with pytest.raises(ValueError, match="exactly model.alpha"):
        StepEngine(model, w_opt, other, grad_clip=5.0)
    engine = StepEngine(model, w_opt, arch.optimizer, grad_clip=5.0)
    (tb, vb), = _batches(torch.float32, 1)
    w_opt.param_groups[0]["lr"] = 0.01  # the scheduler's move is fine
    engine.step(tb, vb)
    arch.optimizer.param_groups[0]["lr"] = 1.0  # a graph would silently keep the old one
    with pytest.raises(ValueError, match="other than the weight lr"):
        engine.step(tb, vb)
    assert engine_supported(1, True, True) and engine_supported(1, True, True, graph=True)
    assert not engine_supported(1, False, True) and not engine_supported(1, True, False)
    # second order: on the engine only where it is replayed as a CUDA graph
    assert engine_supported(2, True, True, graph=True)
    assert not engine_supported(2, True, True) and not engine_supported(2, False, True, graph=True)
    with pytest.raises(ValueError, match="order"):
        StepEngine(model, w_opt, arch.optimizer, grad_clip=5.0, order=3)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
compile_ok = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("BAYESNAS_COMPILE_TESTS") == "1"),
    reason="torch.compile on a CPU takes minutes; set BAYESNAS_COMPILE_TESTS=1 (or run on CUDA)")


@cuda
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("method", ["darts", "balenas"])
def test_cuda_graph_replay_equals_eager_engine(tmp_path, method, order) -> None:
    """On CUDA, ten replayed steps (with a learning-rate change) end where ten eager engine
    steps do, from the same start with the same noise: float32, alpha within 1e-5 and
    weights within 1e-4 relative (cuDNN may pick other algorithms under the graph)."""
    runs = []
    for graph in (False, True):
        cfg = make_tiny_config(tmp_path, method=method, mc_samples=3, order=order)
        cfg.device = "cuda"
        torch.manual_seed(0)
        model = build_supernet(cfg, 4, 1)
        s = cfg.search
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                                nesterov=True, weight_decay=s.w_weight_decay)
        arch = build_arch_update(cfg, model, 64, torch.Generator(device="cuda").manual_seed(5))
        engine = StepEngine(model, w_opt, arch.optimizer, grad_clip=5.0, cuda_graph=graph, order=order)
        for i, (tb, vb) in enumerate(_batches(torch.float32, 10)):
            if i == 5:
                w_opt.param_groups[0]["lr"] = 0.01
            engine.step(tuple(t.cuda() for t in tb), tuple(t.cuda() for t in vb))
        engine.sync_state()
        runs.append((model, engine.epoch_stats(), arch.optimizer.state[model.alpha]))
    (m0, s0, a0), (m1, s1, a1) = runs
    torch.testing.assert_close(m1.alpha, m0.alpha, rtol=1e-5, atol=1e-6)
    for p, q in zip(m0.weight_parameters(), m1.weight_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert int(a0["step"]) == int(a1["step"]) == 10
    for k in s0:
        assert s1[k] == pytest.approx(s0[k], rel=1e-4, abs=1e-6)


@cuda
@pytest.mark.parametrize("cell_impl,order", [("matmul", 1), ("conv", 1), ("elementwise", 1), ("matmul", 2)])
def test_cuda_graph_search_matches_plain_path(tmp_path, cell_impl, order) -> None:
    """A short BaLeNAS search on CUDA: the graph-replayed fast path ends with the plain
    path's mu and sigma (same tolerance as the CPU test), with TF32 off; in second order
    too (the search then takes the engine, which it does only under a CUDA graph)."""
    from dataclasses import replace

    from bayesnas_core.data import TensorSplit
    from bayesnas_core.search import search

    results = []
    for fast in (True, False):
        cfg = make_tiny_config(tmp_path, method="balenas", mc_samples=3, batched_mc=fast,
                               fused_cell=fast, cell_impl=cell_impl, order=order)
        cfg.device = "cuda"
        data = make_tiny_data()
        data = replace(data, **{k: TensorSplit(getattr(data, k).x.cuda(), getattr(data, k).y.cuda())
                                for k in ("train", "valid", "test")})
        # full float32 convolutions: TF32 (cuDNN's default) rounds the two paths' differently
        # shaped convolutions differently, which moves mu by ~1e-3 in two epochs
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            results.append(search(cfg, data, progress=False))
    torch.testing.assert_close(results[0].mu, results[1].mu, rtol=0, atol=1e-4)
    torch.testing.assert_close(results[0].sigma, results[1].sigma, rtol=1e-4, atol=1e-6)


@pytest.mark.compile
@compile_ok
@pytest.mark.parametrize("device", ["cuda" if torch.cuda.is_available() else "cpu"])
def test_compiled_cells_compute_the_same_function(tmp_path, device) -> None:
    """torch.compile'd fused cells (inductor, elementwise form) give the eager fused
    (matmul) cells' logits and gradients (alpha and weights) to float32 round-off, for one alpha and for M=3; the
    uncompiled() block restores eager cells for double backward."""
    torch.manual_seed(0)
    cfg = make_tiny_config(tmp_path)
    cfg.device = device
    eager = build_supernet(cfg, 4, 1)
    compiled = type(eager)(C=4, N=1, num_classes=4, in_channels=1, fused=True, compile_cells=True,
                           cell_impl="elementwise", device=device)
    compiled.load_state_dict(eager.state_dict())
    x, y = torch.randn(16, 1, 8, 8, device=device), torch.randint(0, 4, (16,), device=device)
    for alpha in (torch.randn(6, 5, device=device), torch.randn(3, 6, 5, device=device)):
        grads = []
        for net in (eager, compiled):
            a = alpha.clone().requires_grad_(True)
            out = net(x, a.softmax(-1))
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, 4), y.repeat(out.numel() // 64))
            grads.append([out.detach(), *torch.autograd.grad(loss, [a, *net.weight_parameters()])])
        for g_eager, g_comp in zip(*grads):
            torch.testing.assert_close(g_comp, g_eager, rtol=1e-4, atol=1e-5)
    with compiled.uncompiled():
        assert not compiled.compile_cells
    assert compiled.compile_cells
    with pytest.raises(ValueError, match="fused"):
        type(eager)(C=4, N=1, compile_cells=True)


@pytest.mark.compile
@compile_ok
@pytest.mark.parametrize("device", ["cuda" if torch.cuda.is_available() else "cpu"])
def test_search_with_compiled_cells_matches_the_fast_path(tmp_path, device) -> None:
    """The engine with compiled (elementwise) cells ends where the eager fast path does (mu, sigma to
    1e-4, as the plain-path comparison), and the curvature diagnostic (double backward)
    still runs."""
    from bayesnas_core.search import search

    from dataclasses import replace

    from bayesnas_core.data import TensorSplit

    data = make_tiny_data()
    data = replace(data, **{k: TensorSplit(getattr(data, k).x.to(device), getattr(data, k).y.to(device))
                            for k in ("train", "valid", "test")})
    results = []
    for comp in (True, False):
        cfg = make_tiny_config(tmp_path, method="balenas", mc_samples=3)
        cfg.device = device
        cfg.search.compile_cells = comp
        cfg.search.cell_impl = "elementwise" if comp else "matmul"  # as bench's compiled path
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            results.append(search(cfg, data, progress=False))
    torch.testing.assert_close(results[0].mu, results[1].mu, rtol=0, atol=1e-4)
    torch.testing.assert_close(results[0].sigma, results[1].sigma, rtol=1e-4, atol=1e-6)
    assert all("hessian_eig" in m for m in results[0].metrics)
