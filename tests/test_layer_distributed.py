"""OptimizationLayer under DistributedDataParallel: 2 processes, gloo with a file store.

A small model (a linear layer producing the y-values of a line fit, and a learnable ridge
strength in a cost weight) feeds an implicit-mode OptimizationLayer. Each rank takes half of the
batch; DDP all-reduces (averages) the gradients, which must equal the gradients of the same model
on the whole batch in one process.
"""
import datetime
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nlls

F64 = torch.float64
WORLD_SIZE = 2
BATCH = 8  # 4 problems per rank
POINTS = 6
FEATURES = 3

pytestmark = pytest.mark.distributed


def _line_error(optim, aux):
    mc, = optim
    x, y = aux
    return mc.tensor[:, :1] * x.tensor + mc.tensor[:, 1:] - y.tensor


def _ridge_error(optim, aux):
    mc, = optim
    return mc.tensor


class LineFitModel(torch.nn.Module):
    """features (B, FEATURES) -> y-values (B, POINTS) -> ridge line fit -> (m, c) (B, 2)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.net = torch.nn.Linear(FEATURES, POINTS, dtype=F64)
        with torch.no_grad():
            self.net.weight.copy_(torch.randn(POINTS, FEATURES, generator=generator, dtype=F64))
            self.net.bias.copy_(torch.randn(POINTS, generator=generator, dtype=F64))
        self.log_scale = torch.nn.Parameter(torch.tensor(-0.5, dtype=F64))
        mc = nlls.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="mc")
        x = nlls.Variable(torch.linspace(0, 2, POINTS, dtype=F64)[None], name="x")
        y = nlls.Variable(torch.zeros(1, POINTS, dtype=F64), name="y")
        objective = nlls.Objective()
        objective.add(nlls.AutoDiffCostFunction((mc,), _line_error, POINTS, aux_vars=(x, y),
                                                name="line"))
        objective.add(nlls.AutoDiffCostFunction(
            (mc,), _ridge_error, 2,
            cost_weight=nlls.ScaleCostWeight(torch.ones(1, 1, dtype=F64), name="scale"),
            name="ridge"))
        self.layer = nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=5))

    def forward(self, features):
        inputs = {"y": self.net(features), "scale": self.log_scale.exp().reshape(1, 1),
                  "mc": torch.zeros(features.shape[0], 2, dtype=F64)}
        solution, _ = self.layer(inputs, backward_mode="implicit")
        return solution["mc"]


def _data():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(BATCH, FEATURES, generator=generator, dtype=F64)
    target = torch.randn(BATCH, 2, generator=generator, dtype=F64)
    return features, target


def _loss(prediction, target):
    return ((prediction - target) ** 2).mean()  # a mean over the (local) batch


def _worker(rank, world_size, store_path, out_dir):
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback interface
    # A file store, not TCP: with TCP, rank 0 hosts the store and, exiting first, can abort the
    # other rank's teardown (seen on a loaded CI machine); a file store has no server process.
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        model = torch.nn.parallel.DistributedDataParallel(LineFitModel())
        features, target = _data()
        part = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        prediction = model(features[part])
        _loss(prediction, target[part]).backward()  # DDP averages the gradients of the ranks
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        torch.save({"grads": grads, "prediction": prediction.detach()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks are done with the group before either tears it down
    finally:
        dist.destroy_process_group()
    # Leave without running the interpreter's C++ teardown: gloo's background threads sometimes
    # abort ("terminate called without an active exception") at exit on a loaded machine, after
    # the results above are safely on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(out_dir):
    for attempt in range(3):
        store = out_dir / f"store{attempt}"
        try:
            mp.spawn(_worker, args=(WORLD_SIZE, str(store), str(out_dir)), nprocs=WORLD_SIZE,
                     join=True)
            return
        except mp.ProcessExitedException as exc:
            # A rank killed by a signal (gloo's teardown abort under load) is retried; a Python
            # error in a rank (ProcessRaisedException) is not.
            if attempt == 2 or exc.signal_name is None:
                raise


def test_ddp_allreduced_gradients_equal_full_batch(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = LineFitModel()
        features, target = _data()
        prediction = model(features)
        _loss(prediction, target).backward()
        expected = {name: p.grad for name, p in model.named_parameters()}
    finally:
        torch.set_num_threads(threads)
    assert set(expected) == {"net.weight", "net.bias", "log_scale"}
    for name, grad in expected.items():
        assert float(grad.abs().max()) > 1e-3, name  # every parameter really gets a gradient

    _spawn(tmp_path)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    torch.testing.assert_close(torch.cat([r["prediction"] for r in results]), prediction.detach(),
                               atol=1e-12, rtol=0)
    for result in results:
        assert set(result["grads"]) == set(expected)
        for name, grad in result["grads"].items():
            torch.testing.assert_close(grad, expected[name], atol=1e-10, rtol=1e-10,
                                       msg=lambda m: f"{name}: {m}")
