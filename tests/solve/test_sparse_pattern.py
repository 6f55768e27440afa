"""SparsePattern from variable blocks equals the scalar pattern of J^T J found entry by entry (the
sorted distinct entries of every member's dense block, the diagonal always kept)."""
import numpy as np
import pytest
import torch

from nlls.solve.systems import SparsePattern


def _reference(dof, columns):
    """CSR arrays, diagonal and scatter positions from the scalar entries, by brute force."""
    flats = [(c[:, :, None] * dof + c[:, None, :]).reshape(-1) for c in columns]
    diagonal = torch.arange(dof) * (dof + 1)
    unique = torch.unique(torch.cat(flats + [diagonal]))
    rows = torch.div(unique, dof, rounding_mode="floor")
    return dict(rows=rows, cols=unique % dof, crow=torch.searchsorted(rows, torch.arange(dof + 1)),
                diagonal=torch.searchsorted(unique, diagonal),
                scatter=[torch.searchsorted(unique, f) for f in flats], nnz=unique.numel())


def _assert_same(pattern, reference):
    assert pattern.nnz == reference["nnz"]
    for name in ("rows", "cols", "crow", "diagonal"):
        assert torch.equal(getattr(pattern, name), reference[name]), name
    assert all(torch.equal(a, b) for a, b in zip(pattern.scatter, reference["scatter"]))


@pytest.mark.parametrize("seed", range(10))
def test_arbitrary_columns_every_column_its_own_variable(seed):
    rng = np.random.default_rng(seed)
    dof = int(rng.integers(3, 30))
    columns = [torch.from_numpy(rng.integers(0, dof, (int(rng.integers(1, 6)), int(rng.integers(1, 5)))))
               for _ in range(3)]
    _assert_same(SparsePattern(dof, columns), _reference(dof, columns))


@pytest.mark.parametrize("seed", range(10))
def test_variables_of_two_sizes_linked_by_members(seed):
    """Cameras of 3 and points of 2 columns: unary members on each, pairs, a pair in reverse."""
    rng = np.random.default_rng(seed)
    n3, n2 = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    starts = np.concatenate([np.arange(n3) * 3, n3 * 3 + np.arange(n2 + 1) * 2])
    dof = int(starts[-1])

    def columns_of(variables):
        return np.concatenate([np.arange(starts[v], starts[v + 1]) for v in variables])

    columns = [torch.from_numpy(np.stack([columns_of([v]) for v in range(n3)])),
               torch.from_numpy(np.stack([columns_of([v]) for v in range(n3, n3 + n2)]))]
    for reverse in (False, True):
        k = int(rng.integers(1, 6))
        pairs = zip(rng.integers(0, n3, k), rng.integers(n3, n3 + n2, k))
        columns.append(torch.from_numpy(np.stack([columns_of([b, a] if reverse else [a, b]) for a, b in pairs])))
    reference = _reference(dof, columns)
    _assert_same(SparsePattern(dof, columns, starts), reference)
    _assert_same(SparsePattern(dof, columns), reference)


@pytest.mark.parametrize("seed", range(5))
def test_variable_pairs_locate_every_entry(seed):
    """``pairs`` and ``pair_start`` (what the Schur analysis reads instead of the entries): entry
    ``(i, j)`` of pair ``(a, b)`` is at ``crow[i] + pair_start + j - bounds[b]``, and the pairs'
    blocks cover the pattern exactly."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, int(rng.integers(2, 9)))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    nvar, dof = len(sizes), int(starts[-1])
    columns = []
    for _ in range(3):
        count = int(rng.integers(1, min(3, nvar) + 1))
        members = [np.concatenate([np.arange(starts[v], starts[v + 1]) for v in rng.permutation(nvar)[:count]])
                   for _ in range(int(rng.integers(1, 5)))]
        columns.extend(torch.from_numpy(m[None]) for m in members)
    pattern = SparsePattern(dof, columns, starts)
    positions = []
    for key, start in zip(pattern.pairs.tolist(), pattern.pair_start.tolist()):
        a, b = divmod(key, nvar)
        for i in range(starts[a], starts[a + 1]):
            for j in range(starts[b], starts[b + 1]):
                position = int(pattern.crow[i]) + start + j - int(starts[b])
                assert (int(pattern.rows[position]), int(pattern.cols[position])) == (i, j)
                positions.append(position)
    assert sorted(positions) == list(range(pattern.nnz))


def test_a_diagonal_shift_is_kept_beside_the_values_until_they_are_read():
    """``SparseMatrix.add_diagonal`` copies nothing: ``diagonal``, ``matvec`` and ``to_dense`` see
    the shift, shifts add up, and ``values`` adds it in once."""
    from nlls.solve.systems import SparseMatrix

    g = torch.Generator().manual_seed(0)
    pattern = SparsePattern(7, [torch.tensor([[0, 1, 4], [2, 3, 4], [5, 6, 0]])])
    values = torch.randn(2, pattern.nnz, generator=g, dtype=torch.float64)
    values = values + values[:, torch.searchsorted(pattern.rows * 7 + pattern.cols, pattern.cols * 7 + pattern.rows)]
    a, b = torch.rand(2, 7, generator=g, dtype=torch.float64), torch.rand(2, 7, generator=g, dtype=torch.float64)
    shifted = SparseMatrix(pattern, values).add_diagonal(a).add_diagonal(b)
    assert shifted.unshifted()[0] is values
    expected = SparseMatrix(pattern, values).to_dense() + torch.diag_embed(a + b)
    x = torch.randn(2, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(shifted.diagonal(), expected.diagonal(dim1=1, dim2=2))
    torch.testing.assert_close(shifted.matvec(x), (expected @ x[..., None])[..., 0])
    torch.testing.assert_close(shifted.to_dense(), expected)
    assert shifted.unshifted()[1] is None and shifted.unshifted()[0] is shifted.values  # added in once
    torch.testing.assert_close(SparseMatrix(pattern, shifted.values).to_dense(), expected)
