"""Per-task gradients → J: the loop and the batched path against an independent oracle
(torch.autograd.functional.jacobian of the stacked losses), unreached inputs, the private
(task-specific) gradients filled in the same passes, and input errors."""
import pytest
import torch
import torch.nn as nn

from mtlkernels.jacobian import check_losses, fill_task_gradients, jacobian, reaches, resolve_grad_mode


def _net(seed: int = 0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    heads = nn.ModuleList([nn.Linear(4, 1).double() for _ in range(3)])
    x = torch.randn(9, 5, dtype=torch.float64)
    return trunk, heads, x


def _losses_fn(trunk, heads, x):
    """Losses as a function of the trunk's parameters (for the functional oracle)."""
    names = [n for n, _ in trunk.named_parameters()]

    def f(*flat):
        z = torch.func.functional_call(trunk, dict(zip(names, flat)), (x,))
        return torch.stack([(h(z) ** 2).mean() * (k + 1) for k, h in enumerate(heads)])

    return f


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_jacobian_matches_functional_oracle(mode):
    trunk, heads, x = _net()
    params = list(trunk.parameters())
    expected = torch.cat(
        [j.reshape(3, -1) for j in torch.autograd.functional.jacobian(_losses_fn(trunk, heads, x), tuple(params))], dim=1
    )
    z = trunk(x)
    losses = [(h(z) ** 2).mean() * (k + 1) for k, h in enumerate(heads)]
    out = torch.full((3, sum(p.numel() for p in params)), float("nan"), dtype=torch.float64)
    J = jacobian(losses, params, mode=mode, out=out)
    assert J.data_ptr() == out.data_ptr()
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-12)


def test_loop_and_batched_agree_with_private_gradients():
    trunk, heads, x = _net(1)
    shared = list(trunk.parameters())
    private = [p for h in heads for p in h.parameters()]
    owners = [[0, 1], [2, 3], [4, 5]]  # task k reaches head k's weight and bias
    results = []
    for mode in ("loop", "batched"):
        z = trunk(x)
        losses = [(h(z) - k).abs().mean() for k, h in enumerate(heads)]
        rows = torch.empty(3, sum(p.numel() for p in shared), dtype=torch.float64)
        outs = [torch.full_like(p, float("nan")) for p in private]
        fill_task_gradients(losses, shared, rows, private=owners, private_inputs=private, private_out=outs, mode=mode)
        results.append((rows, outs))
        # oracle for the private gradients: the plain gradient of the sum of the losses
        z = trunk(x)
        total = sum((h(z) - k).abs().mean() for k, h in enumerate(heads))
        for out, g in zip(outs, torch.autograd.grad(total, private)):
            torch.testing.assert_close(out, g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_unreached_input_gives_zero_block(mode):
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    losses = [(a**2).sum(), (a * 2).sum() + b.sum() * 3]
    J = jacobian(losses, [a, b], mode=mode)
    expected = torch.cat([torch.stack([2 * a.detach(), torch.full((3,), 2.0, dtype=torch.float64)]),
                          torch.tensor([[0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)], dim=1)
    torch.testing.assert_close(J, expected)


def test_one_dimensional_loss_tensor_and_features():
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    z = x @ w
    losses = (z**2).mean(0)  # [K = 2] as one tensor
    J = jacobian(losses, [z], mode="loop")
    expected = torch.zeros(2, 4, 2, dtype=torch.float64)
    expected[0, :, 0] = 2 * z.detach()[:, 0] / 4
    expected[1, :, 1] = 2 * z.detach()[:, 1] / 4
    torch.testing.assert_close(J, expected.reshape(2, 8))


@pytest.mark.parametrize(
    "losses, message",
    [
        ([], "no losses"),
        ([torch.ones(2, requires_grad=True)], "task 0 is not a scalar"),
        ([torch.tensor(1.0)], "task 0 does not require grad"),
        ([torch.tensor(1.0, requires_grad=True), 3.0], "task 1 is a float"),
        (torch.ones(2, 2, requires_grad=True), "1-D tensor"),
        (1.0, "sequence of K scalar tensors or a 1-D tensor; got a float"),
        (None, "got a NoneType"),
        ("ab", "got a str"),
        ({"depth": torch.tensor(1.0, requires_grad=True)}, "losses is a mapping"),
    ],
)
def test_bad_losses(losses, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_losses(losses)


def test_wrong_count_and_modes():
    loss = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="got 1 losses; expected K = 2"):
        check_losses([loss], expected=2)
    with pytest.raises(ValueError, match="grad_mode"):
        resolve_grad_mode("vmap")
    assert resolve_grad_mode("auto") == "loop" and resolve_grad_mode("batched") == "batched"
    with pytest.raises(ValueError, match="contiguous"):
        jacobian([loss * 2], [loss], out=torch.empty(1, 2))


class _SideBySide(torch.autograd.Function):
    """One node with two outputs, as a compiled forward returning z beside the heads' output."""

    @staticmethod
    def forward(ctx, x):
        return x * 2, (x * 2).sum(1) * 3

    @staticmethod
    def backward(ctx, grad_z, grad_out):  # an output the loss does not use comes as zeros
        return grad_z * 2 + grad_out[:, None] * 6


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_reach_tells_unreached_from_zero_gradients(mode):
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    h = x @ w
    z, out = _SideBySide.apply(h)  # z is returned beside out; the losses use out only
    a, b = h.split([1, 2], dim=1)
    losses = [
        out.sum(),  # reaches h (and w), not z
        (a * 0).sum(),  # reaches a with a zero gradient; b is another output of the same split
        (z ** 2).sum() + (w.detach() ** 2).sum(),  # reaches z, h and w
    ]
    inputs = [z, h, w, a, b]
    expected = [
        [False, True, True, False, False],
        [False, True, True, True, False],
        [True, True, True, False, False],
    ]
    rows = torch.empty(3, sum(t.numel() for t in inputs), dtype=torch.float64)
    assert fill_task_gradients(losses, inputs, rows, mode=mode, retain_graph=True, reach=True) == expected
    assert reaches(losses, inputs) == expected
    # the oracle: autograd's own answer, one input at a time
    oracle = [[torch.autograd.grad(l, t, retain_graph=True, allow_unused=True)[0] is not None for t in inputs] for l in losses]
    assert oracle == expected
    assert torch.count_nonzero(rows[1, 12 + 12 + 9 : 12 + 12 + 9 + 4]) == 0  # reached, zero: task 1 on a
    assert fill_task_gradients(losses, inputs, rows, mode=mode, retain_graph=True) is None


def test_reaches_around_finds_the_paths_that_avoid_the_given_tensors():
    """reaches(..., around=[z]) says whether a loss reaches an input by a path that avoids z; the
    oracle: autograd on the same graph built with z cut off (a detached copy in its place)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g)
    w1, w2, w3 = (torch.randn(3, 3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))

    def graph(cut):
        h = torch.tanh(x @ w1)
        z = h * 2
        after = z.detach().requires_grad_() if cut else z
        losses = [
            (after @ w2).sum(),  # only through z to w1; w2 past z
            (after @ w2).sum() + (h @ w3).sum(),  # h (before z) also reached around z: w1 and w3
            (x @ w3).sum() + 0 * after.sum(),  # w3 directly; z itself, but nothing behind it
        ]
        return losses, z

    inputs = [w1, w2, w3]
    losses, z = graph(cut=False)
    found = reaches(losses, inputs, around=[z])
    assert found == [[False, True, False], [True, True, True], [False, False, True]]
    cut_losses, _ = graph(cut=True)
    oracle = [[torch.autograd.grad(l, t, retain_graph=True, allow_unused=True)[0] is not None for t in inputs] for l in cut_losses]
    assert found == oracle
    assert reaches(losses, inputs) == [[True, True, False], [True, True, True], [True, False, True]]


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_inputs_of_several_dtypes_give_j_in_their_common_dtype(mode):
    a = torch.randn(3, dtype=torch.float32, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, dtype=torch.bfloat16, requires_grad=True)
    losses = [(a.double() ** 2).sum() + (b * 3).sum(), (c.float() * 5).sum() + (a * b[0].float()).sum()]
    J = jacobian(losses, [a, b, c], mode=mode)
    assert J.dtype == torch.float64
    expected = torch.zeros(2, 7, dtype=torch.float64)
    expected[0, :3] = 2 * a.detach().double()
    expected[0, 3:5] = 3
    expected[1, :3] = b[0].detach().float().double()
    expected[1, 3] = a.detach().sum().double()
    expected[1, 5:] = 5
    torch.testing.assert_close(J, expected, rtol=1e-6, atol=1e-6)
    J16 = jacobian([(c.float() ** 2).sum(), (a * 2).sum()], [a, c], mode=mode)
    assert J16.dtype == torch.float32
