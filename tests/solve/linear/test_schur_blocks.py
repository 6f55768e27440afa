"""The Schur structure's analysis at the level of variables (schur_blocks) equals the analysis
entry by entry: the same index tensors everywhere, on patterns with several kept block sizes,
kept variables merged into one block, eliminated variables listed out of order, a dense and a
sparse reduced system; the same refusal of linked eliminated variables; the entry-level path
for eliminated columns that are not whole variables."""
import numpy as np
import pytest
import torch

from nlls.solve.linear.schur_blocks import block_analysis
from nlls.solve.linear.schur_structure import SchurStructure
from nlls.solve.systems import SparseMatrix, SparsePattern

F64 = torch.float64


def scene(seed, merged=False):
    """Variables: cameras of 6 (with ``merged``, each a 3-dof rotation and a 3-dof translation
    that every cost function uses together), points of 3, intrinsics of 2 shared by cameras.
    Returns ``(starts, groups, points)``: column boundaries, member columns per group and the
    points' columns."""
    rng = np.random.default_rng(seed)
    cameras, points, intrinsics = int(rng.integers(2, 6)), int(rng.integers(3, 30)), int(rng.integers(1, 3))
    sizes = [3, 3] * cameras if merged else [6] * cameras
    sizes += [3] * points + [2] * intrinsics
    starts = np.concatenate([[0], np.cumsum(sizes)])
    per_camera = 2 if merged else 1
    first_point, first_intrinsic = per_camera * cameras, per_camera * cameras + points

    def columns(variables):
        return np.concatenate([np.arange(starts[v], starts[v + 1]) for v in variables])

    def camera(c):
        return [per_camera * c + k for k in range(per_camera)]

    observations = [(c, p) for p in range(points) for c in rng.permutation(cameras)[:int(rng.integers(1, cameras + 1))]]
    groups = [np.stack([columns(camera(c) + [first_point + p, first_intrinsic + c % intrinsics])
                        for c, p in observations])]
    if cameras > 1 and rng.random() < 0.7:  # odometry between cameras: kept-kept entries off the diagonal
        groups.append(np.stack([columns(camera(c) + camera(c + 1)) for c in range(cameras - 1)]))
    if rng.random() < 0.5:  # a prior on some points: members of one variable
        groups.append(np.stack([columns([first_point + p]) for p in range(0, points, 3)]))
    point_columns = np.stack([columns([first_point + p]) for p in range(points)])
    chosen = rng.permutation(points)[:int(rng.integers(1, points + 1))]  # a subset, out of order
    return starts, [torch.from_numpy(g) for g in groups], torch.from_numpy(point_columns[chosen])


def fields(structure):
    """Every index tensor and number of a structure, flat by name."""
    out = {}
    for name, value in structure.__dict__.items():
        if name == "pattern" and value is not None:
            out.update({f"pattern.{k}": getattr(value, k) for k in ("rows", "cols", "crow", "diagonal")})
        elif isinstance(value, list):
            out.update({f"{name}[{i}].{k}": v for i, item in enumerate(value) for k, v in item.__dict__.items()})
        elif name != "pattern" and not name.startswith("_"):
            out[name] = value
    return out


def assert_same(a, b):
    fa, fb = fields(a), fields(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        x, y = fa[name], fb[name]
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, name


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("reduced", ["dense", "sparse"])
@pytest.mark.parametrize("seed", range(8))
def test_variable_level_equals_entry_level(seed, reduced, merged):
    starts, groups, points = scene(seed, merged)
    dof = int(starts[-1])
    by_variable = SparsePattern(dof, groups, starts)
    by_entry = SparsePattern(dof, groups)  # every column its own variable: the entry-level path
    assert block_analysis(by_variable, points, "Schur") is not None
    assert block_analysis(by_entry, points, "Schur") is None
    fast, reference = SchurStructure(by_variable, points, reduced), SchurStructure(by_entry, points, reduced)
    assert_same(fast, reference)
    if merged:  # a camera's rotation and translation form one kept block of 6
        assert int(fast.block_sizes[0]) == 6


def test_bundle_adjustment_linearization_takes_the_variable_path():
    import nlls
    from nlls.io.bal import BALProblem
    from nlls.solve.linear.schur_columns import eliminated_columns
    from nlls.solve.linearization import SparseLinearization

    rng = np.random.default_rng(0)
    observations = np.array([(c, p) for p in range(40) for c in rng.permutation(5)[:3]])
    problem = BALProblem(torch.from_numpy(rng.normal(size=(5, 9))), torch.from_numpy(rng.normal(size=(40, 3))),
                         observations, torch.zeros(len(observations), 2, dtype=F64))
    evaluator = nlls.LevenbergMarquardt(problem.objective(), linear_solver="schur").evaluator
    pattern = SparseLinearization(evaluator).pattern
    columns, _ = eliminated_columns(evaluator, None)
    assert block_analysis(pattern, columns, "Schur") is not None
    entry_pattern = SparsePattern(pattern.dof, [g.offsets for g in evaluator.groups])
    assert_same(SchurStructure(pattern, columns, "dense"), SchurStructure(entry_pattern, columns, "dense"))


@pytest.mark.parametrize("reduced", ["dense", "sparse"])
@pytest.mark.parametrize("case", ["everything", "unlinked", "kept only"])
def test_nothing_kept_or_nothing_coupled(case, reduced):
    """Every variable eliminated (no kept block, no coupling), eliminated variables no cost
    function links to a kept one, or nothing eliminated but an unused variable."""
    starts = np.array([0, 2, 4, 7])
    groups = [torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5, 6]])]  # three unary members
    eliminated = {"everything": torch.tensor([[0, 1], [2, 3]]), "unlinked": torch.tensor([[0, 1]]),
                  "kept only": torch.tensor([[2, 3]])}[case]
    if case == "everything":
        groups = groups[:1]
        starts = starts[:3]
    dof = int(starts[-1])
    by_variable, by_entry = SparsePattern(dof, groups, starts), SparsePattern(dof, groups)
    assert block_analysis(by_variable, eliminated, "Schur") is not None
    assert_same(SchurStructure(by_variable, eliminated, reduced), SchurStructure(by_entry, eliminated, reduced))


def test_linked_eliminated_variables_are_refused_with_the_same_message():
    starts = np.array([0, 2, 5, 8, 11])  # a kept variable of 2, three of 3
    groups = [torch.tensor([[0, 1, 2, 3, 4]]), torch.tensor([[5, 6, 7, 8, 9, 10]])]  # links 2 and 3
    eliminated = torch.tensor([[2, 3, 4], [5, 6, 7], [8, 9, 10]])
    messages = []
    for pattern in (SparsePattern(11, groups, starts), SparsePattern(11, groups)):
        with pytest.raises(ValueError, match="different eliminated variables") as caught:
            SchurStructure(pattern, eliminated, "dense")
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "columns 5 and 8" in messages[0]


def test_columns_that_are_not_whole_variables_take_the_entry_path_and_solve():
    starts, groups, _ = scene(3)
    dof = int(starts[-1])
    pattern = SparsePattern(dof, groups, starts)
    cameras = torch.arange(3)[None]  # half of the first camera: not a whole variable
    assert block_analysis(pattern, cameras, "Schur") is None
    g = torch.Generator().manual_seed(0)
    values = torch.zeros(2, pattern.nnz, dtype=F64)
    for columns, index in zip(groups, pattern.scatter):
        jac = torch.randn(2, columns.shape[0], 2, columns.shape[1], generator=g, dtype=F64)
        values = values.index_add(1, index, (jac.mT @ jac).reshape(2, -1))
    A = SparseMatrix(pattern, values).add_diagonal(torch.ones(2, dof, dtype=F64))
    rhs = torch.randn(2, dof, generator=g, dtype=F64)
    from nlls.solve.linear import Schur
    x, ok = Schur(eliminate=cameras).factor(A).solve(rhs)
    assert ok.all()
    torch.testing.assert_close(x, torch.linalg.solve(A.to_dense(), rhs))
