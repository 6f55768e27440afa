"""Pose-graph files as they are: edge-only files (poses composed from the edges), TORO's
rotation-first ``EDGE3`` information (GTSAM's numbers), ``EDGE2`` written in g2o's order."""
import math

import numpy as np
import pytest
import torch

import nlls
from nlls.io import FormatError, PoseGraph, PoseGraphEdges, read, read_g2o, read_toro

from .reference import POSE_GRAPHS, data_file, lm

F64 = torch.float64


# ---- graphs made here, written in every format ---------------------------------------------------
def _true_poses(group, n, seed):
    """A walk: one metre forward and a turn per step (3-D: climbing and rolling a little)."""
    g = torch.Generator().manual_seed(seed)
    dof = 3 if group is nlls.SE2 else 6
    step = torch.zeros(n - 1, dof, dtype=F64)
    step[:, 0] = 1.0
    step[:, dof - 1] = 0.3 * torch.randn(n - 1, generator=g, dtype=F64)
    if dof == 6:
        step[:, 2] = 0.1 * torch.randn(n - 1, generator=g, dtype=F64)
        step[:, 3:5] = 0.1 * torch.randn(n - 1, 2, generator=g, dtype=F64)
    poses = [group(dtype=F64)]
    for k in range(n - 1):
        poses.append(poses[-1].compose(group.exp_map(step[k:k + 1])))
    return torch.cat([p.tensor for p in poses])


def make_graph(group, n=24, seed=0, noise=0.02, ids=None) -> PoseGraph:
    """Odometry ``k -> k+1`` and loop closures written backwards ``k -> k-6``, measurements and
    initial poses perturbed by ``noise``; vertex ids ``ids`` (default ``10 + 3k``)."""
    g = torch.Generator().manual_seed(seed + 1)
    true = _true_poses(group, n, seed)
    dof = 3 if group is nlls.SE2 else 6
    pairs = [(k, k + 1) for k in range(n - 1)] + [(k, k - 6) for k in range(6, n, 3)]
    a, b = (torch.tensor(side) for side in zip(*pairs))
    relative = group(true[a]).between(group(true[b]))
    measured = relative.retract(noise * torch.randn(len(pairs), dof, generator=g, dtype=F64)).tensor
    start = group(true).retract(noise * torch.randn(n, dof, generator=g, dtype=F64)).tensor
    root = torch.randn(len(pairs), dof, dof, generator=g, dtype=F64)
    information = 0.1 * root @ root.mT + torch.diag(torch.arange(1.0, dof + 1, dtype=F64) * 10)
    ids = np.arange(n) * 3 + 10 if ids is None else np.asarray(ids)
    edges = PoseGraphEdges(ids[np.array(pairs)], measured, information)
    return PoseGraph(3 if dof == 6 else 2, ids, start, edges)


def _rpy(rotation: torch.Tensor):
    m = rotation.tolist()
    return math.atan2(m[2][1], m[2][2]), math.asin(-m[2][0]), math.atan2(m[1][0], m[0][0])


def _words(numbers) -> str:
    return " ".join(repr(float(v)) for v in numbers)


def to_toro(graph: PoseGraph) -> str:
    """The graph as TORO records (2-D information as ``xx xy yy tt xt yt``, 3-D rotation first)."""
    lines = []
    for i, pose in zip(graph.vertex_ids.tolist(), graph.poses):
        if graph.dimension == 2:
            lines.append(f"VERTEX2 {i} {_words([pose[0], pose[1], math.atan2(pose[3], pose[2])])}")
        else:
            lines.append(f"VERTEX3 {i} {_words([*pose[:, 3], *_rpy(pose[:, :3])])}")
    for (i, j), z, info in zip(graph.edges.pairs.tolist(), graph.edges.measurements,
                               graph.edges.information.numpy()):
        if graph.dimension == 2:
            fields = [z[0], z[1], math.atan2(z[3], z[2]),
                      info[0, 0], info[0, 1], info[1, 1], info[2, 2], info[0, 2], info[1, 2]]
            lines.append(f"EDGE2 {i} {j} {_words(fields)}")
        else:
            swap = [3, 4, 5, 0, 1, 2]
            upper = info[swap][:, swap][np.triu_indices(6)]
            lines.append(f"EDGE3 {i} {j} {_words([*z[:, 3], *_rpy(z[:, :3]), *upper])}")
    return "\n".join(lines) + "\n"


def write(graph: PoseGraph, folder, form: str, vertices: bool = True):
    """``graph`` in ``form`` ("g2o" or "toro"), with or without its vertex records."""
    path = folder / f"graph-{form}-{graph.dimension}d-{'full' if vertices else 'edges'}.txt"
    if form == "g2o":
        graph.write_g2o(path, graph.objective())
    else:
        path.write_text(to_toro(graph))
    if not vertices:
        lines = [line for line in path.read_text().splitlines() if not line.startswith("VERTEX")]
        path.write_text("\n".join(lines) + "\n")
    return path


def _cost(problem_or_objective) -> float:
    objective = problem_or_objective
    if isinstance(objective, PoseGraph):
        objective = objective.objective()
    return float(objective.error_metric()[0])


# ---- edge-only files ------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["g2o", "toro"])
@pytest.mark.parametrize("group", [nlls.SE2, nlls.SE3], ids=["2d", "3d"])
def test_edge_only_files_solve_to_the_cost_with_vertices(tmp_path, form, group):
    graph = make_graph(group)
    full = read(write(graph, tmp_path, form))
    assert full.initialization == "file" and full.notes == ()
    finals = {}
    for initialization in ("spanning_tree", "chain"):
        problem = read(write(graph, tmp_path, form, vertices=False), initialization=initialization)
        assert problem.initialization == initialization
        assert problem.vertex_ids.tolist() == sorted(graph.vertex_ids.tolist())
        assert len(problem.notes) == 1 and "no VERTEX" in problem.notes[0]
        objective = problem.objective()
        info = lm(objective).optimize()
        assert bool(info.converged.all())
        finals[initialization] = float(info.final_error[0])
    objective = full.objective()
    lm(objective).optimize()
    finals["file"] = _cost(objective)
    assert finals["file"] > 1e-3  # the noise leaves a cost to minimize
    for value in finals.values():
        assert value == pytest.approx(finals["file"], rel=1e-7)


@pytest.mark.parametrize("group", [nlls.SE2, nlls.SE3], ids=["2d", "3d"])
def test_exact_measurements_give_the_poses_relative_to_the_root(tmp_path, group):
    graph = make_graph(group, noise=0.0)
    path = write(graph, tmp_path, "g2o", vertices=False)
    for initialization in ("spanning_tree", "chain"):  # odometry first: the chain is exact too
        problem = read(path, initialization=initialization)
        assert _cost(problem) < 1e-18
        expected = group(graph.poses[:1]).inverse().compose(group(graph.poses)).tensor
        torch.testing.assert_close(problem.poses, expected, rtol=0, atol=1e-10)


def _se2(x, y, theta):
    return nlls.SE2(x_y_theta=torch.tensor([[x, y, theta]], dtype=F64))


def test_chain_is_gtsams_rule_and_the_tree_goes_both_ways(tmp_path):
    z01, z21, z13 = _se2(1.0, 0.0, 0.5), _se2(0.5, -1.0, 0.2), _se2(2.0, 0.3, -0.4)
    info = "1 0 0 1 0 1"
    path = tmp_path / "edges.g2o"
    path.write_text(f"EDGE_SE2 0 1 1.0 0.0 0.5 {info}\nEDGE_SE2 2 1 0.5 -1.0 0.2 {info}\n"
                    f"EDGE_SE2 1 3 2.0 0.3 -0.4 {info}\nEDGE_SE2 7 8 1 0 0 {info}\n")
    chain = read(path, initialization="chain")
    identity = nlls.SE2(dtype=F64).tensor[0]
    x1 = z01.tensor[0]
    expected = [identity, x1, identity, z01.compose(z13).tensor[0], identity, torch.tensor([1.0, 0, 1, 0], dtype=F64)]
    assert chain.vertex_ids.tolist() == [0, 1, 2, 3, 7, 8]
    torch.testing.assert_close(chain.poses, torch.stack(expected))
    tree = read(path)  # vertex 2 through the reversed edge 2 -> 1; the part {7, 8} from 7
    assert tree.initialization == "spanning_tree"
    expected[2] = z01.compose(z21.inverse()).tensor[0]
    torch.testing.assert_close(tree.poses, torch.stack(expected))


def test_real_edge_only_file_reaches_gtsams_cost_from_the_spanning_tree(tmp_path):
    source = data_file("w100.graph")
    path = tmp_path / "w100-edges.graph"
    path.write_text("".join(line for line in source.read_text().splitlines(keepends=True)
                            if not line.startswith("VERTEX")))
    problem = read(path)
    assert problem.initialization == "spanning_tree" and len(problem.vertex_ids) == 100
    objective = problem.objective()
    # w100's edges run backwards (i -> i-1): chaining them puts most poses at the origin
    assert _cost(objective) < 0.1 * _cost(read(path, initialization="chain"))
    info = lm(objective).optimize()
    assert float(info.final_error[0]) == pytest.approx(POSE_GRAPHS["w100.graph"][3], rel=1e-7)
    assert int(info.iterations[0]) <= 10


def test_edge_only_files_are_still_checked(tmp_path):
    path = tmp_path / "loop.graph"
    path.write_text("EDGE2 0 1 1 0 0 1 0 1 1 0 0\nEDGE2 1 1 1 0 0 1 0 1 1 0 0\n")
    with pytest.raises(FormatError, match=r"loop.graph:2: EDGE2 from vertex 1 to itself"):
        read(path)
    path = tmp_path / "partial.graph"  # some vertex records: every vertex must have one
    path.write_text("VERTEX2 0 0 0 0\nEDGE2 0 1 1 0 0 1 0 1 1 0 0\n")
    with pytest.raises(FormatError, match=r"partial.graph:2: EDGE2 refers to vertex 1"):
        read(path)
    path = tmp_path / "fix.g2o"
    path.write_text("EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nFIX 0\n")
    assert read(path).fixed == (0,)


# ---- TORO 3-D information: rotation first, as TORO and GTSAM read it --------------------------
# GTSAM 4.3.0 on this file: readG2o(path, True).error = 14.56431451527803; on the same graph as
# g2o EDGE_SE3:QUAT with these 21 numbers (translation first there): 6.257384366238233
_INFO = np.diag([10.0, 20.0, 30.0, 400.0, 500.0, 600.0])
_INFO[0, 1] = _INFO[1, 0] = 1.0
_INFO[0, 4] = _INFO[4, 0] = 2.0
_INFO[2, 3] = _INFO[3, 2] = -3.0
_INFO[3, 5] = _INFO[5, 3] = 5.0
_EDGE3_FILE = ("VERTEX3 0 0 0 0 0 0 0\nVERTEX3 1 1.0 0.5 -0.2 0.1 -0.2 0.3\n"
               f"EDGE3 0 1 0.8 0.6 -0.1 0.15 -0.1 0.2 {_words(_INFO[np.triu_indices(6)])}\n")


def test_toro_edge3_information_is_rotation_first_with_gtsams_cost(tmp_path):
    path = tmp_path / "edge3.graph"
    path.write_text(_EDGE3_FILE)
    problem = read_toro(path)
    assert _cost(problem) == pytest.approx(14.56431451527803, rel=1e-12)
    swap = [3, 4, 5, 0, 1, 2]
    assert torch.equal(problem.edges.information[0], torch.from_numpy(_INFO[swap][:, swap]))
    # by hand: 0.5 r^T Omega r with r = (rotation, translation) of Log(Z^-1 x0^-1 x1)
    residual = problem.objective(vectorized=False).cost_functions["e0"].error()[0].numpy()  # (t, w) order
    by_hand = 0.5 * residual[swap] @ _INFO @ residual[swap]
    assert _cost(problem) == pytest.approx(by_hand, rel=1e-12)
    # written as g2o (translation first) and read back: the same cost
    problem.write_g2o(tmp_path / "edge3.g2o", problem.objective())
    assert _cost(read(tmp_path / "edge3.g2o")) == pytest.approx(14.56431451527803, rel=1e-12)


def test_g2o_edge_se3_keeps_translation_first_with_gtsams_cost(tmp_path):
    # the graph of _EDGE3_FILE, with _INFO as g2o's translation-first matrix
    measured = np.concatenate([_rotation(0.15, -0.1, 0.2), [[0.8], [0.6], [-0.1]]], 1)
    pose1 = np.concatenate([_rotation(0.1, -0.2, 0.3), [[1.0], [0.5], [-0.2]]], 1)
    poses = torch.from_numpy(np.stack([np.eye(3, 4), pose1]))
    path = tmp_path / "edge3.g2o"
    graph = PoseGraph(3, np.array([0, 1]), poses, PoseGraphEdges(
        np.array([[0, 1]]), torch.from_numpy(measured)[None], torch.from_numpy(_INFO)[None]))
    graph.write_g2o(path, graph.objective())
    assert _cost(read_g2o(path)) == pytest.approx(6.257384366238233, rel=1e-12)


def _rotation(roll, pitch, yaw) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (f(a) for a in (roll, pitch, yaw) for f in (math.cos, math.sin))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


# ---- EDGE2 in g2o order, EDGE_SE2 in TORO order ---------------------------------------------------
def test_edge2_in_g2o_order_is_detected_reported_and_forcible(tmp_path):
    graph = make_graph(nlls.SE2, n=8)
    info = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64)).expand(len(graph.edges), 3, 3)
    info = info.clone()
    info[:, 0, 2] = info[:, 2, 0] = 0.5  # upper triangle 1 0 .5 2 0 3: yy = 0 in TORO order
    graph = PoseGraph(2, graph.vertex_ids, graph.poses, PoseGraphEdges(graph.edges.pairs,
                      graph.edges.measurements, info))
    reference = write(graph, tmp_path, "g2o")
    lines = to_toro(graph).splitlines()
    wrong = []
    for line in lines:  # write each EDGE2's information in g2o's order instead of TORO's
        words = line.split()
        if words[0] == "EDGE2":
            a, b, c, d, e, f = words[6:]  # xx xy yy tt xt yt
            words[6:] = [a, b, e, c, f, d]  # xx xy xt yy yt tt
        wrong.append(" ".join(words))
    path = tmp_path / "g2o-order.graph"
    path.write_text("\n".join(wrong) + "\n")
    problem = read_toro(path)
    assert problem.information_order == "g2o"
    assert len(problem.notes) == 1 and "g2o order" in problem.notes[0]
    assert f"{len(graph.edges)} of {len(graph.edges)} matrices" in problem.notes[0]
    torch.testing.assert_close(problem.edges.information, info)
    assert _cost(problem) == pytest.approx(_cost(read_g2o(reference)), rel=1e-13)
    assert read(path, information_order="g2o").notes == ()
    first_edge = 1 + next(k for k, line in enumerate(wrong) if line.startswith("EDGE2"))
    with pytest.raises(FormatError, match=rf"g2o-order.graph:{first_edge}: EDGE2: information matrix is not positive"):
        read(path, information_order="toro")
    # the other way round: an EDGE_SE2 file in TORO's order
    assert read_toro(write(graph, tmp_path, "toro")).information_order == "toro"
    swapped = []
    for line in reference.read_text().splitlines():
        words = line.split()
        if words[0] == "EDGE_SE2":
            a, b, c, d, e, f = words[6:]  # xx xy xt yy yt tt
            words[6:] = [a, b, d, f, c, e]  # xx xy yy tt xt yt
        swapped.append(" ".join(words))
    path = tmp_path / "toro-order.g2o"
    path.write_text("\n".join(swapped) + "\n")
    problem = read_g2o(path)
    assert problem.information_order == "toro" and "TORO order" in problem.notes[0]
    assert _cost(problem) == pytest.approx(_cost(read_g2o(reference)), rel=1e-13)


def test_a_matrix_positive_definite_in_both_orders_keeps_the_declared_one(tmp_path):
    path = tmp_path / "both.graph"
    path.write_text("VERTEX2 0 0 0 0\nVERTEX2 1 1 0 0\nEDGE2 0 1 1 0 0  4 0.1 5 6 0.2 0.3\n")
    problem = read(path)
    assert problem.information_order == "toro" and problem.notes == ()
    expected = torch.tensor([[4, 0.1, 0.2], [0.1, 5, 0.3], [0.2, 0.3, 6]], dtype=F64)
    assert torch.equal(problem.edges.information[0], expected)


def test_options_are_checked_by_name(tmp_path):
    path = data_file("w100.graph")
    with pytest.raises(ValueError, match=r"read_toro: initialization must be one of "
                                         r"'spanning_tree', 'chain', got 'bfs'"):
        read_toro(path, initialization="bfs")
    with pytest.raises(ValueError, match=r"read_g2o: information_order must be one of "
                                         r"'auto', 'toro', 'g2o', got 'G2O'"):
        read_g2o(data_file("noisyToyGraph.txt"), information_order="G2O")
    with pytest.raises(ValueError, match=r"information_order applies to pose graphs"):
        read(data_file("dubrovnik-3-7-pre.txt"), information_order="g2o")
