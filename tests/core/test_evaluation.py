"""Vectorized evaluation: same-signature cost functions run as one stacked call."""
import warnings

import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator, signature
from nlls.solve.linearization import DenseLinearization


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, optim, aux):
        self.calls += 1
        p, = optim
        t, = aux
        return torch.sin(p.tensor * t.tensor) + p.tensor ** 2 - t.tensor


def _many_costs(n, batch=2, err_fn=None):
    torch.manual_seed(0)
    err_fn = err_fn or _Counter()
    obj = nlls.Objective()
    points = [nlls.Vector(tensor=0.1 * torch.randn(batch, 1, dtype=torch.float64), name=f"p{i}")
              for i in range(n)]
    for i in range(n):
        t = nlls.Variable(torch.randn(batch, 1, dtype=torch.float64), name=f"t{i}")
        obj.add(nlls.AutoDiffCostFunction((points[i],), err_fn, 1, aux_vars=(t,), name=f"c{i}"))
    return obj, err_fn


def test_thousand_same_signature_costs_make_one_jacobian_call_per_iteration(monkeypatch):
    obj, counter = _many_costs(1000)
    evaluator = Evaluator(obj)
    assert len(evaluator.groups) == 1 and evaluator.groups[0].size == 1000
    jvp_calls = []  # torch.func Jacobian calls, forward (jvp) or reverse (vjp) mode
    real_jvp, real_vjp = torch.func.jvp, torch.func.vjp
    monkeypatch.setattr(torch.func, "jvp", lambda *a, **k: jvp_calls.append(1) or real_jvp(*a, **k))
    monkeypatch.setattr(torch.func, "vjp", lambda *a, **k: jvp_calls.append(1) or real_vjp(*a, **k))
    optimizer = nlls.GaussNewton(obj, max_iterations=3, abs_err_tolerance=0, rel_err_tolerance=0)
    counter.calls = 0
    info = optimizer.optimize()
    iterations = int(info.iterations.max())
    assert iterations == 3
    # one torch.func call per iteration (the Jacobians of all 1,000 cost functions), and per
    # iteration one plain error evaluation of the candidate, plus the initial error
    assert len(jvp_calls) == iterations
    assert counter.calls == 2 * iterations + 1


def test_stacked_jacobians_equal_one_by_one():
    obj, _ = _many_costs(7, batch=3)
    evaluator = Evaluator(obj)
    state, aux = evaluator.gather(), evaluator.aux()
    (jac, err), = evaluator.jacobians(state, aux)
    assert jac.shape == (7, 3, 1, 1) and err.shape == (7, 3, 1)
    for k, cf in enumerate(obj.cost_functions.values()):
        (j,), e = cf.weighted_jacobians_error()
        torch.testing.assert_close(jac[k], j)
        torch.testing.assert_close(err[k], e)


def test_dense_system_matches_full_jacobian():
    torch.manual_seed(1)
    obj = nlls.Objective()
    a = nlls.Vector(tensor=torch.randn(2, 2, dtype=torch.float64), name="a")
    b = nlls.Vector(tensor=torch.randn(2, 3, dtype=torch.float64), name="b")
    c = nlls.Vector(tensor=torch.randn(2, 2, dtype=torch.float64), name="c")

    def pair(optim, aux):
        u, v = optim
        return torch.cat([u.tensor * v.tensor[:, :1], (v.tensor ** 2).sum(1, keepdim=True)], 1)

    def prior(optim, aux):
        return optim[0].tensor - aux[0].tensor

    for i, (u, v) in enumerate([(a, b), (c, b)]):
        obj.add(nlls.AutoDiffCostFunction((u, v), pair, 3, name=f"pair{i}",
                                          cost_weight=nlls.ScaleCostWeight(float(i + 1))))
    for var in (a, b, c):
        target = nlls.Variable(torch.randn(1, var.dof(), dtype=torch.float64), name=f"{var.name}_t")
        obj.add(nlls.AutoDiffCostFunction((var,), prior, var.dof(), aux_vars=(target,), name=f"prior_{var.name}"))
    evaluator = Evaluator(obj)
    assert len(evaluator.groups) == 3  # pairs; 2-dof priors; the 3-dof prior
    system = DenseLinearization(evaluator).linearize(evaluator.gather(), evaluator.aux())

    # reference: the full Jacobian of obj.error() w.r.t. (a, b, c), by autograd
    def residual(av, bv, cv):
        saved = a.tensor, b.tensor, c.tensor
        a.tensor, b.tensor, c.tensor = av, bv, cv
        try:
            return obj.error()
        finally:
            a.tensor, b.tensor, c.tensor = saved

    for i in range(2):
        full = torch.autograd.functional.jacobian(
            lambda av, bv, cv: residual(av, bv, cv)[0],
            (a.tensor[i:i + 1], b.tensor[i:i + 1], c.tensor[i:i + 1]))
        J = torch.cat([f[:, 0] for f in full], dim=1)  # (dim, 7) in (a, b, c) order
        r = obj.error()[i]
        # evaluator column order: blocks by (type, shape) in first-seen order: (a, c) then b
        perm = torch.tensor([0, 1, 5, 6, 2, 3, 4])
        Jp = J[:, perm]
        torch.testing.assert_close(system.A[i], Jp.T @ Jp)
        torch.testing.assert_close(system.g[i], Jp.T @ r)


def test_signature_separates_different_constants():
    class Scaled(nlls.CostFunction):
        def __init__(self, p, factor, name):
            super().__init__((p,), name=name)
            self.p, self.factor = p, factor

        def dim(self):
            return 1

        def error(self):
            return self.factor * self.p.tensor

        def jacobians(self):
            return [self.factor * torch.ones(self.p.batch_size, 1, 1, dtype=self.p.dtype)], self.error()

    p = nlls.Vector(tensor=torch.ones(1, 1), name="p")
    q = nlls.Vector(tensor=torch.ones(1, 1), name="q")
    r = nlls.Vector(tensor=torch.ones(1, 1), name="r")
    one, two, also_one = Scaled(p, 1.0, "one"), Scaled(q, 2.0, "two"), Scaled(r, 1.0, "also_one")
    assert signature(one) == signature(also_one) != signature(two)
    obj = nlls.Objective()
    for cf in (one, two, also_one):
        obj.add(cf)
    evaluator = Evaluator(obj)
    errors = evaluator.errors(evaluator.gather(), evaluator.aux())
    flat = sorted(float(e) for group in errors for e in group.flatten())
    assert flat == [1.0, 1.0, 2.0]


def test_group_with_wrong_error_shape_names_a_member():
    obj, _ = _many_costs(3, err_fn=lambda o, a: torch.cat([o[0].tensor, o[0].tensor], 1))
    with pytest.raises(ValueError, match=r"'c0' \(and 2 more of its kind\): error has shape \(2, 2\)"):
        nlls.GaussNewton(obj).optimize()


def test_analytic_jacobian_with_wrong_shape_is_reported():
    class Bad(nlls.CostFunction):
        def __init__(self, p):
            super().__init__((p,), name="bad")
            self.p = p

        def dim(self):
            return 2

        def error(self):
            return self.p.tensor

        def jacobians(self):
            return [torch.ones(self.p.batch_size, 2, 3)], self.error()

    obj = nlls.Objective()
    obj.add(Bad(nlls.Vector(tensor=torch.ones(1, 2), name="p")))
    with pytest.raises(ValueError, match=r"'bad': Jacobian for variable 'p' has shape \(1, 2, 3\)"):
        nlls.GaussNewton(obj).optimize()


def test_stacked_aux_data_is_reused_until_it_changes():
    obj, _ = _many_costs(5)
    evaluator = Evaluator(obj)
    first = evaluator.aux()
    assert evaluator.aux() is first  # nothing changed: no new stacking
    obj.update({"t3": torch.full((2, 1), 7.0, dtype=torch.float64)})
    second = evaluator.aux()
    assert second is not first and second[0][0][6:8].eq(7.0).all()  # member 3 of the group, batch 2
    obj.aux_vars["t1"].tensor.mul_(0)  # an in-place change (not done by nlls) is seen too
    assert evaluator.aux()[0][0][2:4].eq(0).all()


class _Offset(nlls.CostFunction):
    """``p - foo`` with ``foo`` a tensor attribute (not a Variable)."""

    def __init__(self, p, foo, name):
        super().__init__((p,), name=name)
        self.p, self.foo = p, foo

    def dim(self):
        return 2

    def error(self):
        return self.p.tensor - self.foo

    def jacobians(self):
        eye = torch.eye(2, dtype=self.p.dtype).expand(self.p.batch_size, 2, 2)
        return [eye], self.error()


def _offsets(foos, cls=_Offset):
    obj = nlls.Objective()
    for i, foo in enumerate(foos):
        p = nlls.Vector(tensor=torch.full((3, 2), float(i), dtype=torch.float64), name=f"p{i}")
        obj.add(cls(p, foo, f"c{i}"))
    return obj


def _build(obj):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluator = Evaluator(obj)
    return evaluator, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _one_by_one(obj):
    return torch.cat([cf.weighted_error() for cf in obj.cost_functions.values()], dim=1)


def test_tensor_attribute_that_splits_a_kind_is_reported_once_per_build():
    foos = [torch.tensor([[float(i), -1.0]], dtype=torch.float64) for i in range(5)]
    obj = _offsets(foos)
    evaluator, messages = _build(obj)
    assert [g.size for g in evaluator.groups] == [1] * 5  # correct, but five calls
    assert len(messages) == 1
    assert messages[0].startswith("cost function 'c0' and 4 more of type _Offset are evaluated one by one: ")
    assert ("attribute 'foo' of _Offset is a tensor held outside a Variable; wrap it in nlls.Variable "
            "(aux_vars) to stack it" in messages[0])
    assert "override _Offset.stack_key()" in messages[0]
    with pytest.warns(UserWarning, match="'c0' and 4 more of type _Offset are evaluated one by one"):
        errors = obj.error()  # the objective's own evaluator reports it too
    torch.testing.assert_close(errors, _one_by_one(obj))
    assert len(_build(obj)[1]) == 1  # and again for the next build
    two_tables = _offsets([foos[0], foos[1], foos[0], foos[1]])
    evaluator, messages = _build(two_tables)
    assert sorted(g.size for g in evaluator.groups) == [2, 2]
    assert len(messages) == 1 and "are evaluated in 2 calls instead of one" in messages[0]


def test_shared_tensor_attribute_stacks_without_warning():
    shared = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    obj = _offsets([shared] * 4)
    evaluator, messages = _build(obj)
    assert [g.size for g in evaluator.groups] == [4] and messages == []
    single, messages = _build(_offsets([torch.zeros(1, 2, dtype=torch.float64)]))
    assert len(single.groups) == 1 and messages == []  # nothing to split


class _Table(_Offset):
    """Declares its data: instances with the same table name hold the same table."""

    def __init__(self, p, foo, name):
        super().__init__(p, foo, name)
        self.table_name = f"table{int(foo[0, 0])}"

    def stack_key(self):
        return (self.table_name, self.attributes_key(exclude=("foo",)))


def test_overridden_stack_key_groups_as_declared():
    tables = [torch.tensor([[float(k), 3.0]], dtype=torch.float64) for k in (0, 0, 1, 0, 1)]
    obj = _offsets([t.clone() for t in tables], cls=_Table)  # equal data, distinct tensors
    evaluator, messages = _build(obj)
    assert messages == []
    assert sorted(sorted(m.name for m in g.members) for g in evaluator.groups) == [
        ["c0", "c1", "c3"], ["c2", "c4"]]
    torch.testing.assert_close(obj.error(), _one_by_one(obj))


def test_wrapped_and_weight_attributes_are_named_with_their_class():
    class Tempered(nlls.ScaleCostWeight):
        def __init__(self, scale, temperature):
            super().__init__(scale)
            self.temperature = temperature  # a tensor: weights are compared like cost functions

    obj = nlls.Objective()
    for i in range(3):
        p = nlls.Vector(tensor=torch.ones(1, 2, dtype=torch.float64), name=f"p{i}")
        inner = _Offset(p, torch.zeros(1, 2, dtype=torch.float64), f"c{i}")
        obj.add(nlls.RobustCostFunction(inner, nlls.HuberLoss(1.0)))
        q = nlls.Vector(tensor=torch.ones(1, 2, dtype=torch.float64), name=f"q{i}")
        obj.add(nlls.Difference(q, nlls.Variable(torch.zeros(1, 2, dtype=torch.float64), name=f"t{i}"),
                                cost_weight=Tempered(2.0, torch.tensor(float(i))), name=f"d{i}"))
    evaluator, messages = _build(obj)
    assert len(evaluator.groups) == 6 and len(messages) == 2
    robust, = [m for m in messages if "'c0_robust' and 2 more of type RobustCostFunction" in m]
    assert "attribute 'foo' of _Offset is a tensor" in robust
    weighted, = [m for m in messages if "'d0' and 2 more of type Difference" in m]
    assert "attribute 'temperature' of Tempered is a tensor" in weighted


def test_library_cost_functions_stack_without_warnings():
    generator = torch.Generator().manual_seed(4)
    poses = [nlls.SE2.rand(2, generator, dtype=torch.float64, name=f"x{i}") for i in range(5)]
    obj = nlls.Objective()
    information = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    for i in range(4):
        between = nlls.Between(poses[i], poses[i + 1], poses[i + 1].copy(new_name=f"m{i}"),
                               cost_weight=nlls.MatrixCostWeight.from_information(information), name=f"e{i}")
        obj.add(nlls.RobustCostFunction(between, nlls.CauchyLoss(0.5)) if i % 2 else between)
    obj.add(nlls.Difference(poses[0], poses[0].copy(new_name="anchor"), cost_weight=nlls.ScaleCostWeight(10.0),
                            name="prior"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluator = Evaluator(obj)
    assert sorted(g.size for g in evaluator.groups) == [1, 2, 2]


def test_gather_stacks_blocks_and_broadcasts_batch_one_variables():
    """``gather``: one ``(N, B, ...)`` tensor per block, a batch-1 variable repeated over the batch
    (a view: the values are its own), and ``scatter`` hands each variable its row back."""
    obj, _ = _many_costs(4, batch=3)
    single = nlls.Vector(tensor=torch.tensor([[0.5]], dtype=torch.float64), name="shared")
    obj.add(nlls.AutoDiffCostFunction((single,), lambda o, a: o[0].tensor - 1.0, 1, name="prior"))
    ev = Evaluator(obj)
    (block,) = ev.gather()
    assert block.shape == (5, 3, 1)
    names = [v.name for v in ev.blocks[0].variables]
    for k, name in enumerate(names):
        torch.testing.assert_close(block[k], obj.optim_vars[name].tensor.expand(3, 1))
    ev.scatter((block + 1.0,))
    assert obj.optim_vars["shared"].tensor.shape == (3, 1)
    torch.testing.assert_close(obj.optim_vars["shared"].tensor, torch.full((3, 1), 1.5, dtype=torch.float64))
