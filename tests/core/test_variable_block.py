"""VariableBlock: N variables as one object; the objective and the layer know it by name."""
import pytest
import torch

import nlls
from nlls.core.blocks import VariableBlock
from nlls.geometry import Between

F64 = torch.float64


def _ring(batch=1, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    truth = nlls.SE2.exp_tensor(torch.randn(n, 3, dtype=F64, generator=gen))
    i = torch.arange(n)
    j = (i + 1) % n
    i, j = torch.cat([i, torch.tensor([0, 1])]), torch.cat([j, torch.tensor([3, 4])])
    measured = nlls.SE2.between_tensor(truth[i], truth[j])[None]
    start = nlls.SE2.retract_tensor(truth.repeat(batch, 1), 0.1 * torch.randn(batch * n, 3, dtype=F64, generator=gen))
    poses = VariableBlock(nlls.SE2, start.reshape(batch, n, 4), "poses")
    objective = nlls.Objective()
    objective.add(Between.many(poses, i, j, measured, torch.ones(1, len(i), 1, dtype=F64), name="edges"))
    objective.add(nlls.Difference(poses[0], nlls.SE2(tensor=truth[:1], name="anchor"), name="prior"))
    return objective, poses, truth


def test_members_are_named_views_validated_once():
    data = nlls.SE2.exp_tensor(torch.randn(6, 3, dtype=F64)).reshape(2, 3, 4)
    block = VariableBlock(nlls.SE2, data, "b", names=["u", "v", "w"])
    assert len(block) == 3 and [m.name for m in block] == ["u", "v", "w"]
    assert isinstance(block[1], nlls.SE2) and torch.equal(block[1].tensor, data[:, 1])
    assert torch.equal(block.tensor, data)
    assert [m.name for m in VariableBlock(nlls.Point3, torch.zeros(1, 2, 3), "pts")] == ["pts[0]", "pts[1]"]
    bad = data.clone()
    bad[1, 2, 2] = 3.0
    with pytest.raises(ValueError, match="SE2 'b'"):
        VariableBlock(nlls.SE2, bad, "b")
    with pytest.raises(ValueError, match=r"VariableBlock 'b': 2 names for 3 members"):
        VariableBlock(nlls.SE2, data, "b", names=["u", "v"])
    with pytest.raises(ValueError, match=r"shape \(B, N, ...\)"):
        VariableBlock(nlls.SE2, data[0, 0], "b")


def test_objective_updates_a_block_in_one_entry_and_keeps_it_on_failure():
    objective, poses, truth = _ring()
    assert objective.blocks == {"poses": poses} and "poses[3]" in objective.optim_vars
    before = objective.error().clone()
    objective.update({"poses": truth[None]})
    assert torch.equal(poses[2].tensor, truth[None, 2]) and objective.error().abs().max() < 1e-12
    bad = truth[None].clone()
    bad[0, 4, 2] = 5.0
    moved = nlls.SE2.retract_tensor(truth, torch.ones(6, 3, dtype=F64))[None]
    with pytest.raises(ValueError, match="'edges_weights'"):  # a good block, a bad entry after it
        objective.update({"poses": moved, "edges_weights": torch.zeros(1, 8, 2)})
    with pytest.raises(ValueError, match="SE2 'poses'"):
        objective.update({"poses": bad})
    assert objective.error().abs().max() < 1e-12  # nothing changed
    with pytest.raises(KeyError, match=r"blocks: \['poses'\]"):
        objective.update({"pose": truth[None]})
    assert before.abs().max() > 1e-3


def test_a_name_used_twice_is_refused():
    objective, poses, _ = _ring()
    other = VariableBlock(nlls.SE2, poses.tensor.clone(), "poses", names=[f"y{k}" for k in range(6)])
    with pytest.raises(ValueError, match="block name 'poses' is already used"):
        objective.add(Between.many(other, torch.tensor([0]), torch.tensor([1]), poses.tensor[:, :1], name="more"))


def test_the_layer_takes_and_returns_the_block_whole():
    objective, poses, truth = _ring(batch=2)
    layer = nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=50, abs_err_tolerance=0.0,
                                                    rel_err_tolerance=1e-15))
    start = poses.tensor.clone()
    weights = torch.ones(2, 8, 1, dtype=F64, requires_grad=True)
    solution, info = layer({"poses": start, "edges_weights": weights}, backward_mode="implicit")
    assert bool(info.converged.all())
    assert solution["poses"].shape == (2, 6, 4)
    torch.testing.assert_close(solution["poses"][:, 4], solution["poses[4]"], rtol=0, atol=0)
    torch.testing.assert_close(solution["poses"], truth[None].expand(2, 6, 4), rtol=0, atol=1e-8)
    solution["poses"][..., :2].sum().backward()
    assert weights.grad is not None and weights.grad.shape == (2, 8, 1)
    assert torch.equal(poses.tensor, start)  # the layer leaves the objective as it was


def test_pose_graph_reader_names_the_block_poses(tmp_path):
    path = tmp_path / "g.g2o"
    path.write_text("VERTEX_SE2 3 0 0 0\nVERTEX_SE2 7 1 0.1 0.2\nEDGE_SE2 3 7 1 0 0 1 0 0 1 0 1\n")
    objective = nlls.io.read(path).objective()
    assert list(objective.blocks) == ["poses"] and [m.name for m in objective.blocks["poses"]] == ["x3", "x7"]
    objective.update({"poses": torch.tensor([[[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]]], dtype=F64)})
    assert objective.error_metric().item() < 1e-20


def test_bulk_checks_of_a_group_still_name_the_culprit():
    """Objective.add checks a group's thousands of members in one pass; a bad one is still named."""
    def group(block, name="edges"):
        return Between.many(block, torch.tensor([0, 1]), torch.tensor([1, 2]),
                            nlls.SE2.identity(2).tensor[None].to(F64), name=name)

    data = nlls.SE2.identity(3).tensor[None].to(F64)
    block = VariableBlock(nlls.SE2, data.clone(), "poses")
    assert list(iter(block)) == block.members and torch.equal(block[2].tensor, data[:, 2])
    block[1].tensor = block[1].tensor.float()  # a member changed after the block was made
    with pytest.raises(ValueError, match=r"'edges': optim variable 'poses\[1\]' has dtype torch.float32"):
        nlls.Objective().add(group(block))
    objective = nlls.Objective()
    objective.add(nlls.Difference(nlls.SE2(tensor=data[:, 0], name="poses[2]"),
                                  nlls.SE2(tensor=data[:, 0], name="zero"), name="prior"))
    with pytest.raises(ValueError, match=r"'edges': variable name 'poses\[2\]' is already used"):
        objective.add(group(VariableBlock(nlls.SE2, data.clone(), "poses")))
    objective = nlls.Objective()
    target = VariableBlock(nlls.SE2, data.clone(), "poses")
    objective.add(nlls.Difference(nlls.SE2(tensor=data[:, 0], name="a"), target[0], name="prior"))
    with pytest.raises(ValueError, match=r"variable 'poses\[0\]' is used as an optim variable here "
                                         "and as an aux variable elsewhere"):
        objective.add(group(target))
    shared = VariableBlock(nlls.SE2, data.clone(), "poses")  # shared with an earlier factor: fine
    objective = nlls.Objective()
    objective.add(nlls.Difference(shared[0], nlls.SE2(tensor=data[:, 0], name="zero"), name="prior"))
    objective.add(group(shared))
    assert objective.optim_vars["poses[0]"] is shared[0] and len(objective.optim_vars) == 3
