"""Pose graph readers and the g2o writer: real files against GTSAM's costs, information-matrix
orders, ids, round trips and build time."""
import math
import time

import numpy as np
import pytest
import torch

import nlls
from nlls.io import PoseGraph, read, read_g2o, read_toro

from .reference import POSE_GRAPHS, data_file, lm


# ---- an independent reading, with the public API only ---------------------------------------
def _reference_objective(path) -> nlls.Objective:
    """The objective a user would write by hand for a g2o or TORO file: one ``Objective.add`` per
    edge, ``MatrixCostWeight.from_information`` of the matrix assembled here."""
    poses, edges = {}, []
    for line in open(path):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        tag, numbers = words[0], [float(w) for w in words[1:]]
        if tag in ("VERTEX_SE2", "VERTEX2"):
            x_y_theta = torch.tensor([numbers[1:4]], dtype=torch.float64)
            poses[int(numbers[0])] = nlls.SE2(x_y_theta=x_y_theta, name=f"x{int(numbers[0])}")
        elif tag == "VERTEX_SE3:QUAT":
            x, y, z, qx, qy, qz, qw = numbers[1:]
            q = torch.tensor([qw, qx, qy, qz], dtype=torch.float64)
            pose = torch.cat([torch.tensor([x, y, z], dtype=torch.float64), q / q.norm()])[None]
            poses[int(numbers[0])] = nlls.SE3(x_y_z_quaternion=pose, name=f"x{int(numbers[0])}")
        elif tag in ("EDGE_SE2", "EDGE2", "EDGE_SE3:QUAT"):
            edges.append((tag, int(numbers[0]), int(numbers[1]), numbers[2:]))
    objective = nlls.Objective()
    for k, (tag, i, j, values) in enumerate(edges):
        if tag == "EDGE_SE3:QUAT":
            x, y, z, qx, qy, qz, qw = values[:7]
            q = torch.tensor([qw, qx, qy, qz], dtype=torch.float64)
            data = torch.cat([torch.tensor([x, y, z], dtype=torch.float64), q / q.norm()])[None]
            measurement = nlls.SE3(x_y_z_quaternion=data, name=f"z{k}")
            information = _symmetric(values[7:], 6)
        else:
            x_y_theta = torch.tensor([values[:3]], dtype=torch.float64)
            measurement = nlls.SE2(x_y_theta=x_y_theta, name=f"z{k}")
            if tag == "EDGE2":  # TORO: xx xy yy tt xt yt
                a, b, c, d, e, f = values[3:]
                information = torch.tensor([[a, b, e], [b, c, f], [e, f, d]], dtype=torch.float64)
            else:
                information = _symmetric(values[3:], 3)
        weight = nlls.MatrixCostWeight.from_information(information, name=f"S{k}")
        objective.add(nlls.Between(poses[i], poses[j], measurement, weight, name=f"e{k}"))
    return objective


def _symmetric(upper_row_major, n):
    out = torch.zeros(n, n, dtype=torch.float64)
    k = 0
    for r in range(n):
        for c in range(r, n):
            out[r, c] = out[c, r] = upper_row_major[k]
            k += 1
    return out


def _words(numbers) -> str:
    return " ".join(repr(float(v)) for v in numbers)


def _cost(objective) -> float:
    return float(objective.error_metric()[0])


# ---- the real files ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(POSE_GRAPHS))
def test_real_file_parses_with_gtsam_initial_cost(name):
    vertices, edges, initial, _ = POSE_GRAPHS[name]
    path = data_file(name)
    problem = read(path)
    assert isinstance(problem, PoseGraph)
    assert problem.dimension == (3 if "pose3" in name else 2)
    assert (len(problem.vertex_ids), len(problem.edges)) == (vertices, edges)
    objective = problem.objective()
    assert len(objective.optim_vars) == vertices and objective.size() == edges
    assert _cost(objective) == pytest.approx(initial, rel=1e-9)
    # the fast assembly (one object per edge, or one group) gives what one Objective.add per edge gives
    reference = _reference_objective(path)
    assert list(reference.cost_functions) == list(problem.objective(vectorized=False).cost_functions)
    assert torch.allclose(objective.error(), reference.error(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(POSE_GRAPHS))
def test_levenberg_marquardt_reaches_gtsam_final_cost(name):
    _, _, initial, final = POSE_GRAPHS[name]
    problem = read(data_file(name))
    objective = problem.objective()
    info = lm(objective).optimize()
    assert bool(info.converged.all()), info.message
    assert _cost(objective) == pytest.approx(final, rel=1e-3)
    assert float(info.final_error[0]) == pytest.approx(_cost(objective), rel=1e-12)


def test_bundled_dataset_is_w100_with_gtsam_initial_cost():
    path = nlls.io.bundled_dataset()
    assert path.name == "w100.graph" and (path.parent / "LICENSE-gtsam.txt").is_file()
    problem = read(path)
    assert (problem.dimension, len(problem.vertex_ids), len(problem.edges)) == (2, 100, 300)
    initial = POSE_GRAPHS["w100.graph"][2]
    assert _cost(problem.objective()) == pytest.approx(initial, rel=1e-9)


# ---- information matrices, ids, FIX --------------------------------------------------------------
_TWO_POSES = "{v} 0 0 0 0\n{v} 1 1.1 0.2 0.3\n"


def test_toro_and_g2o_information_orders(tmp_path):
    # the same matrix [[1, .1, .2], [.1, 2, .3], [.2, .3, 3]] in each format's order
    toro = tmp_path / "graph.graph"
    toro.write_text(_TWO_POSES.format(v="VERTEX2") + "EDGE2 0 1 1 0 0.1  1 0.1 2 3 0.2 0.3\n")
    g2o = tmp_path / "graph.g2o"
    g2o.write_text(_TWO_POSES.format(v="VERTEX_SE2") + "EDGE_SE2 0 1 1 0 0.1  1 0.1 0.2 2 0.3 3\n")
    expected = torch.tensor([[1, 0.1, 0.2], [0.1, 2, 0.3], [0.2, 0.3, 3]], dtype=torch.float64)
    a, b = read_toro(toro), read_g2o(g2o)
    assert torch.equal(a.edges.information[0], expected)
    assert torch.equal(b.edges.information[0], expected)
    cost = _cost(a.objective())
    assert cost > 0.01
    assert cost == pytest.approx(_cost(b.objective()), rel=1e-14)
    assert cost == pytest.approx(_cost(_reference_objective(toro)), rel=1e-14)


def test_g2o_3d_information_is_upper_triangle_translation_first(tmp_path):
    rng = np.random.default_rng(1)
    root = rng.normal(size=(6, 6))
    information = root @ root.T + 6 * np.eye(6)
    upper = information[np.triu_indices(6)]
    path = tmp_path / "graph.g2o"
    path.write_text("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0.1 0.2 0.1 0.2 0.3 0.9\n"
                    f"EDGE_SE3:QUAT 0 1 0.9 0 0.1 0 0 0.1 0.99 {_words(upper)}\n")
    problem = read_g2o(path)
    assert torch.equal(problem.edges.information[0], torch.from_numpy(information))
    objective = problem.objective()
    residual = problem.objective(vectorized=False).cost_functions["e0"].error()[0].numpy()  # (tx ty tz rx ry rz)
    assert _cost(objective) == pytest.approx(0.5 * residual @ information @ residual, rel=1e-12)
    assert _cost(objective) == pytest.approx(_cost(_reference_objective(path)), rel=1e-12)


def test_non_contiguous_ids_in_any_order_and_fix(tmp_path):
    path = tmp_path / "ids.g2o"
    path.write_text(
        "# ids need not be contiguous, records need not come in order\n"
        "EDGE_SE2 10 3 1 0 0.5 1 0 0 1 0 1\n"
        "VERTEX_SE2 42 2 2 0\n"
        "EDGE_SE2 3 42 1 1 0 4 0 0 4 0 9\n"
        "VERTEX_SE2 10 0 0 0\n"
        "\n"
        "VERTEX_SE2 3 1.2 0.1 0.4\n"
        "FIX 10\n"
    )
    problem = read(path)
    assert problem.vertex_ids.tolist() == [42, 10, 3]
    assert problem.edges.pairs.tolist() == [[10, 3], [3, 42]]
    assert problem.fixed == (10,)
    objective = problem.objective()
    assert sorted(objective.optim_vars) == ["x10", "x3", "x42"]
    assert _cost(objective) == pytest.approx(_cost(_reference_objective(path)), rel=1e-14)
    assert torch.allclose(objective.optim_vars["x42"].tensor,
                          torch.tensor([[2.0, 2.0, 1.0, 0.0]], dtype=torch.float64))
    # the objective stays a normal one: a prior can be added, names are still checked
    x10 = objective.optim_vars["x10"]
    target = nlls.SE2(x_y_theta=torch.tensor([[0.0, 0.0, 0.1]], dtype=torch.float64), name="t")
    objective.add(nlls.Difference(x10, target, name="prior"))
    assert objective.size() == 3 and objective.error().shape == (1, 9)
    with pytest.raises(ValueError, match="'x3' is already used"):
        objective.add(nlls.Difference(nlls.SE2(target.tensor, name="x3"), target, name="other"))


def _rz_ry_rx(roll, pitch, yaw) -> torch.Tensor:
    """``Rz(yaw) Ry(pitch) Rx(roll)`` ``(3, 3)`` from axis-angle exponentials."""
    axes = torch.eye(3, dtype=torch.float64)
    factors = [nlls.SO3.exp_map(angle * axes[k:k + 1]).to_matrix()[0]
               for k, angle in ((2, yaw), (1, pitch), (0, roll))]
    return factors[0] @ factors[1] @ factors[2]


def test_toro_3d_rotations_and_information(tmp_path):
    rng = np.random.default_rng(0)
    rpy = rng.uniform(-1.2, 1.2, size=(3, 3))
    translation = rng.normal(size=(3, 3))
    poses = [torch.cat([_rz_ry_rx(*r), torch.from_numpy(t)[:, None]], 1)
             for r, t in zip(rpy, translation)]
    information = np.diag([1.0, 2, 3, 40, 50, 60])
    information[0, 4] = information[4, 0] = 0.5
    lines = [f"VERTEX3 {k} {_words([*t, *r])}" for k, (r, t) in enumerate(zip(rpy, translation))]
    for i, j in ((0, 1), (1, 2), (2, 0)):  # exact relative poses, written as roll pitch yaw
        relative = nlls.SE3(poses[i][None]).between(nlls.SE3(poses[j][None])).tensor[0]
        m = relative[:, :3]
        roll, pitch = math.atan2(m[2, 1], m[2, 2]), math.asin(-m[2, 0])
        yaw = math.atan2(m[1, 0], m[0, 0])
        numbers = [*relative[:, 3], roll, pitch, yaw, *information[np.triu_indices(6)]]
        lines.append(f"EDGE3 {i} {j} {_words(numbers)}")
    path = tmp_path / "graph3.graph"
    path.write_text("\n".join(lines) + "\n")
    problem = read(path)
    assert problem.dimension == 3
    assert torch.allclose(problem.poses, torch.stack(poses), atol=1e-12)
    # the 21 numbers are rotation first (roll pitch yaw x y z); stored translation first
    swap = [3, 4, 5, 0, 1, 2]
    assert torch.equal(problem.edges.information[0], torch.from_numpy(information[swap][:, swap]))
    objective = problem.objective()
    assert _cost(objective) < 1e-20  # the measurements are exact
    # moved off the optimum, the cost equals that of the same graph written as g2o
    step = torch.full((1, 6), 0.1, dtype=torch.float64)
    objective.update({"x1": nlls.SE3(poses[1][None]).retract(step).tensor})
    problem.write_g2o(tmp_path / "graph3.g2o", objective)
    again = read_g2o(tmp_path / "graph3.g2o").objective()
    assert _cost(again) == pytest.approx(_cost(objective), rel=1e-12)


# ---- writing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["w100.graph", "pose3example-grid.txt"])
def test_write_g2o_round_trip(tmp_path, name):
    problem = read(data_file(name))
    objective = problem.objective()
    lm(objective, max_iterations=2).optimize()
    out = tmp_path / "optimized.g2o"
    problem.write_g2o(out, objective)
    again = read_g2o(out)
    assert again.dimension == problem.dimension
    assert np.array_equal(again.vertex_ids, problem.vertex_ids)
    assert np.array_equal(again.edges.pairs, problem.edges.pairs)
    assert torch.allclose(again.edges.measurements, problem.edges.measurements, rtol=0, atol=1e-14)
    assert torch.allclose(again.edges.information, problem.edges.information, rtol=1e-15, atol=0)
    current = torch.cat([objective.optim_vars[f"x{i}"].tensor for i in problem.vertex_ids.tolist()])
    assert torch.allclose(again.poses, current, rtol=0, atol=1e-14)
    assert not torch.allclose(again.poses, problem.poses, atol=1e-6)  # the optimized poses
    assert _cost(again.objective()) == pytest.approx(_cost(objective), rel=1e-12)


def test_write_g2o_keeps_fix_and_refuses_batches(tmp_path):
    path = tmp_path / "fix.g2o"
    path.write_text(_TWO_POSES.format(v="VERTEX_SE2") + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nFIX 0\n")
    problem = read_g2o(path)
    objective = problem.objective()
    problem.write_g2o(tmp_path / "out.g2o", objective)
    assert read_g2o(tmp_path / "out.g2o").fixed == (0,)
    objective.update({"x1": objective.optim_vars["x1"].tensor.repeat(2, 1)})
    with pytest.raises(ValueError, match="'x1'.*batch size 1"):
        problem.write_g2o(tmp_path / "out.g2o", objective)


# ---- speed -------------------------------------------------------------------------------------
def test_ten_thousand_edges_build_in_a_fraction_of_a_second(tmp_path):
    rng = np.random.default_rng(0)
    num_poses, num_edges = 5000, 10000
    pairs = [(i, i + 1) for i in range(num_poses - 1)]
    pairs += [(i, min(i + int(rng.integers(2, 50)), num_poses - 1)) for i in
              rng.integers(0, num_poses - 2, num_edges - len(pairs))]
    vertices = [f"VERTEX_SE2 {i} {i * 0.1} {math.sin(i * 0.01)} {i * 0.001}"
                for i in range(num_poses)]
    edges = [f"EDGE_SE2 {i} {j} 0.1 0 0.001 100 0 0 100 0 400" for i, j in pairs]
    path = tmp_path / "big.g2o"
    path.write_text("\n".join(vertices + edges) + "\n")
    start = time.perf_counter()
    objective = read(path).objective()
    elapsed = time.perf_counter() - start
    assert objective.size() == num_edges and len(objective.optim_vars) == num_poses
    # about 0.2-0.3 s on 2 busy cores; one Objective.add per edge (quadratic) takes 90 s
    assert elapsed < 5.0, f"reading and building 10,000 edges took {elapsed:.2f} s"
