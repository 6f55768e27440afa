"""The blocks J^T J and J^T r: every way the rule can pick gives the same numbers, symmetric,
differentiable (autograd, torch.func, torch.compile), and solves do not change."""
import pytest
import torch

import nlls
from nlls.solve import normal_equations as lin
from nlls.solve.normal_equations import NORMAL_VARIANTS, gradient_blocks, normal_blocks, normal_rule

# (leading sizes, dim, D): one block, curve-fit batches, grouped (K, B) blocks, and the
# boundaries of the rule (rows * dim = 4096, dim = 20, D = 3 / 4)
SHAPES = [
    ((1,), 100, 2), ((1,), 3, 1), ((7,), 5, 3), ((256,), 20, 3), ((205,), 20, 2),
    ((204,), 20, 2), ((64,), 64, 3), ((8, 32), 19, 3), ((3, 50), 30, 4), ((4096,), 3, 2),
    ((2, 5), 6, 6),
]


def _blocks(lead, dim, size, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    jac = torch.randn(*lead, dim, size, generator=generator, dtype=torch.float64)
    r = torch.randn(*lead, dim, generator=generator, dtype=torch.float64)
    return jac.to(dtype), r.to(dtype)


def _reference(jac, r):
    jac, r = jac.double(), r.double()
    return jac.mT @ jac, (jac.mT @ r[..., None])[..., 0]


@pytest.mark.parametrize("name", sorted(NORMAL_VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,dim,size", SHAPES)
def test_every_variant_equals_the_float64_reference(name, dtype, lead, dim, size):
    jac, r = _blocks(lead, dim, size, dtype)
    A, g = NORMAL_VARIANTS[name](jac, r)
    A_ref, g_ref = _reference(jac, r)
    assert A.shape == (*lead, size, size) and g.shape == (*lead, size)
    assert A.dtype == dtype and g.dtype == dtype
    eps = torch.finfo(dtype).eps
    # rounding of a sum of dim products: relative to the sum of their magnitudes
    scale_A = jac.double().abs().mT @ jac.double().abs()
    scale_g = (jac.double().abs().mT @ r.double().abs()[..., None])[..., 0]
    assert ((A.double() - A_ref).abs() <= 4 * dim * eps * scale_A + 1e-30).all()
    assert ((g.double() - g_ref).abs() <= 4 * dim * eps * scale_g + 1e-30).all()
    if name == "entries":
        assert torch.equal(A, A.mT)  # exactly symmetric by construction
    else:  # symmetric to rounding (a GEMM may round A_ij and A_ji differently)
        assert ((A - A.mT).double().abs() <= 8 * dim * eps * scale_A + 1e-30).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,dim,size", SHAPES)
def test_rule_andgradient_blocks_equal_the_reference(dtype, lead, dim, size):
    jac, r = _blocks(lead, dim, size, dtype, seed=1)
    A, g = normal_blocks(jac, r)
    A_ref, g_ref = _reference(jac, r)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(A.double(), A_ref, **tol)
    torch.testing.assert_close(g.double(), g_ref, **tol)
    torch.testing.assert_close(gradient_blocks(jac, r).double(), g_ref, **tol)


def test_rule_branches():
    def rule(lead, dim, size, dtype=torch.float32):
        return normal_rule(torch.zeros(*lead, dim, size, dtype=dtype))

    assert rule((1,), 100, 2) == "bmm"  # small: overhead
    assert rule((4096,), 100, 2) == "transposed"
    assert rule((40,), 100, 2) == "bmm" and rule((41,), 100, 2) == "transposed"  # rows*dim 4096
    assert rule((4096,), 19, 3) == "bmm" and rule((4096,), 20, 3) == "transposed"  # tall
    assert rule((4096,), 100, 4) == "bmm"  # D > 3
    assert rule((8, 512), 20, 2) == "transposed"  # grouped (K, B) blocks count as rows


def test_rule_under_compile_picks_fused_entries_while_j_fits():
    picked = []

    def probe(jac):
        picked.append(normal_rule(jac))
        return jac.sum()

    compiled = torch.compile(probe, backend="eager", fullgraph=True, dynamic=False)
    compiled(torch.zeros(4096, 100, 2))  # 3.1 MiB
    compiled(torch.zeros(4096, 100, 2, dtype=torch.float64))  # 6.25 MiB
    compiled(torch.zeros(1, 100, 2))
    assert picked == ["entries", "transposed", "bmm"]


@pytest.mark.parametrize("name", sorted(NORMAL_VARIANTS))
def test_gradcheck_every_variant(name):
    jac, r = _blocks((3,), 6, 3, torch.float64, seed=2)
    jac.requires_grad_(True)
    r.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda j, e: NORMAL_VARIANTS[name](j, e), (jac, r))
    assert torch.autograd.gradgradcheck(lambda j, e: NORMAL_VARIANTS[name](j, e), (jac, r))


@pytest.mark.parametrize("name", sorted(NORMAL_VARIANTS))
def test_torch_func_transforms_of_every_variant(name):
    variant = NORMAL_VARIANTS[name]
    jac, r = _blocks((5,), 8, 2, torch.float64, seed=3)
    tangent_jac, tangent_r = _blocks((5,), 8, 2, torch.float64, seed=4)
    # vmap over the blocks equals the batched call
    A, g = torch.func.vmap(variant)(jac, r)
    A_ref, g_ref = _reference(jac, r)
    torch.testing.assert_close(A, A_ref)
    torch.testing.assert_close(g, g_ref)
    # jvp: d(J^T J) = dJ^T J + J^T dJ, d(J^T r) = dJ^T r + J^T dr
    _, (dA, dg) = torch.func.jvp(variant, (jac, r), (tangent_jac, tangent_r))
    torch.testing.assert_close(dA, tangent_jac.mT @ jac + jac.mT @ tangent_jac)
    torch.testing.assert_close(dg, (tangent_jac.mT @ r[..., None] + jac.mT @ tangent_r[..., None])[..., 0])
    # vjp against autograd of the reference
    _, pullback = torch.func.vjp(variant, jac, r)
    cotangent = (torch.ones_like(A), torch.ones_like(g))
    got = pullback(cotangent)
    want = torch.autograd.grad(sum((c * t).sum() for c, t in zip(cotangent, _reference(
        jac.requires_grad_(), r.requires_grad_()))), (jac, r))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["entries", "transposed"])
def test_compiled_variants_equal_eager(name):
    jac, r = _blocks((64,), 100, 3, torch.float32, seed=5)
    compiled = torch.compile(NORMAL_VARIANTS[name], dynamic=False)
    A, g = compiled(jac, r)
    A_ref, g_ref = _reference(jac, r)
    torch.testing.assert_close(A.double(), A_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(A, A.mT)


def _quadratic_fit(batch, dtype=torch.float64):
    generator = torch.Generator().manual_seed(6)
    x = torch.linspace(-2, 2, 50, dtype=dtype).expand(batch, -1).contiguous()
    truth = torch.randn(batch, 2, generator=generator, dtype=dtype)
    y = truth[:, :1] * x * x + truth[:, 1:] + 0.05 * torch.randn(batch, 50, generator=generator, dtype=dtype)

    class Fit(nlls.CostFunction):
        def __init__(self, p, xv, yv):
            super().__init__(optim_vars=(p,), aux_vars=(xv, yv), name="fit")
            self.p, self.xv, self.yv = p, xv, yv

        def dim(self):
            return self.xv.shape[1]

        def error(self):
            p = self.p.tensor
            return p[:, :1] * self.xv.tensor ** 2 + p[:, 1:] - self.yv.tensor

        def jacobians(self):
            xx = self.xv.tensor ** 2
            return [torch.stack([xx, torch.ones_like(xx)], dim=-1)], self.error()

    objective = nlls.Objective()
    p = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=dtype), name="p")
    objective.add(Fit(p, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    design = torch.stack([x * x, torch.ones_like(x)], dim=-1)
    least_squares = torch.linalg.lstsq(design, y[..., None]).solution[..., 0]
    return objective, p, least_squares


@pytest.mark.parametrize("name", sorted(NORMAL_VARIANTS))
def test_gauss_newton_solutions_do_not_depend_on_the_variant(name, monkeypatch):
    # B * dim = 5000: the rule picks "transposed" eagerly; force each variant in turn
    objective, p, least_squares = _quadratic_fit(100)
    monkeypatch.setattr(lin, "normal_rule", lambda jac: name)
    info = nlls.GaussNewton(objective, max_iterations=3).optimize()
    assert bool(info.converged.all())
    torch.testing.assert_close(p.tensor, least_squares, rtol=1e-10, atol=1e-10)


def test_gauss_newton_with_the_rule_matches_least_squares():
    for batch in (1, 100):  # "bmm" and "transposed"
        objective, p, least_squares = _quadratic_fit(batch)
        nlls.GaussNewton(objective, max_iterations=3).optimize()
        torch.testing.assert_close(p.tensor, least_squares, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of an in-place op: a fallback
@pytest.mark.parametrize("dim, size", [(1, 6), (2, 12), (3, 6), (4, 9)])
def test_outer_products_equal_bmm_exactly_symmetric_and_differentiable(dim, size):
    from nlls.solve.normal_equations import normal_outer

    generator = torch.Generator().manual_seed(dim * size)
    jac = torch.randn(7, 2, dim, size, dtype=torch.float64, generator=generator, requires_grad=True)
    r = torch.randn(7, 2, dim, dtype=torch.float64, generator=generator, requires_grad=True)
    A, g = normal_outer(jac, r)
    A_ref, g_ref = NORMAL_VARIANTS["bmm"](jac, r)
    torch.testing.assert_close(A, A_ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=1e-13, atol=1e-13)
    assert torch.equal(A, A.transpose(-1, -2))
    assert torch.autograd.gradcheck(lambda j, v: normal_outer(j, v), (jac, r))
    # under torch.func as well: a per-sample Jacobian of A through vmap
    per_sample = torch.func.vmap(torch.func.jacrev(lambda j: normal_outer(j, r[0, 0])[0]))(jac[:, 0].detach())
    assert per_sample.shape == (7, size, size, dim, size)


def test_the_rule_takes_outer_products_for_many_short_wide_blocks():
    def jac(rows, dim, size):
        return torch.zeros(rows, 1, dim, size, dtype=torch.float64)

    assert normal_rule(jac(64311, 3, 6)) == "outer"  # pose-graph edges
    assert normal_rule(jac(150049, 2, 12)) == "outer"  # reprojections
    assert normal_rule(jac(100, 2, 12)) == "bmm"  # few blocks: one product is cheaper
    assert normal_rule(jac(64311, 3, 12)) == "bmm"  # measured: bmm is as fast there
    assert normal_rule(jac(64311, 20, 6)) != "outer"  # tall blocks keep their rule
