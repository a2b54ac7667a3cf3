"""Porting slips that used to be accepted silently or fail with an unhelpful message: each is an
error that names the fix and leaves everything as it was."""
import sys

import pytest
import torch
import torch.nn as nn

import mtlkernels as mk
from mtlkernels.optim import CAGrad, MultiTaskOptimizer


def _model_and_losses(K=3, seed=0):
    torch.manual_seed(seed)
    trunk = nn.Linear(4, 5, dtype=torch.float64)
    heads = nn.ModuleList(nn.Linear(5, 1, dtype=torch.float64) for _ in range(K))
    x = torch.randn(8, 4, dtype=torch.float64)
    z = torch.tanh(trunk(x))
    losses = [((head(z).squeeze(1) - (-1) ** k * x[:, 0]) ** 2).mean() for k, head in enumerate(heads)]
    return nn.ModuleList([trunk, heads]), losses


# -- a single scalar where K losses are expected ---------------------------------------------------
def test_summed_losses_on_a_fresh_wrapper_raise_and_change_nothing():
    model, losses = _model_and_losses()
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="single scalar loss: pass the K task losses as a list or a 1-D tensor, not their sum"):
        opt.backward(sum(losses))
    assert opt.num_tasks is None and opt.last is None and opt.roles is None
    assert all(p.grad is None for p in model.parameters())
    opt.backward(losses)  # the correct call afterwards works (it used to fail: "expected K = 1")
    assert opt.num_tasks == 3


def test_summed_losses_after_k_is_known_name_k():
    model, losses = _model_and_losses()
    opt = CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), num_tasks=3)
    with pytest.raises(ValueError, match="single scalar loss; expected K = 3: pass the K task losses"):
        opt.backward(sum(losses))


@pytest.mark.parametrize("how", ["num_tasks=1", "list"])
def test_one_task_is_still_accepted(how):
    model, losses = _model_and_losses(K=1)
    opt = MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), num_tasks=1 if how == "num_tasks=1" else None,
                             shared_params=list(model.parameters()))
    expected = torch.autograd.grad(losses[0], list(model.parameters()), retain_graph=True)  # K = 1: the gradient
    opt.backward(losses[0] if how == "num_tasks=1" else [losses[0]])
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)
    assert opt.num_tasks == 1


# -- a J that looks transposed ---------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda J: mk.aggregate(J, "cagrad"),
    lambda J: mk.gram(J),
    lambda J: mk.combine(torch.ones(J.shape[0], dtype=torch.float64), J),
])
def test_transposed_J_is_named(call):
    J = torch.randn(3, 5000, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"J has shape \(5000, 3\).*looks transposed.*pass J\.T \(shape \(3, 5000\)\)"):
        call(J.T)


@pytest.mark.parametrize("shape", [(1024, 2), (2000, 32), (300, 1)])
def test_many_tasks_of_few_parameters_are_not_flagged(shape):
    """K > N is legitimate: at most 1024 rows, or fewer than 64 rows per column, is taken as given."""
    J = torch.randn(*shape, dtype=torch.float64)
    res = mk.aggregate(J, "mean")
    torch.testing.assert_close(res.direction, J.mean(0), rtol=1e-10, atol=1e-12)


def test_a_one_block_list_passes_a_tall_J_deliberately():
    J = torch.randn(1100, 3, dtype=torch.float64)
    res = mk.aggregate([J], "mean")
    torch.testing.assert_close(res.direction[0], J.mean(0), rtol=1e-10, atol=1e-12)


# -- a reference implementation's option name ------------------------------------------------------
@pytest.mark.parametrize("method, option, value, message", [
    ("cagrad", "alpha", 0.4, "CAGrad's c is the authors' alpha: use c=0.4"),
    ("cagrad", "calpha", 0.4, "CAGrad's c is LibMTL's calpha: use c=0.4"),
    ("cagrad", "norm_eps", 1e-4, "torchjd's norm_eps .* drop it"),
    ("nash_mtl", "n_tasks", 3, "n_tasks is the Nash-MTL authors' and torchjd's task count; .* num_tasks=3"),
    ("pcgrad", "task_num", 3, "task_num is LibMTL's task count; .* num_tasks=3"),
    ("mgda", "mgda_gn", "l2", "LibMTL's mgda_gn is MGDA's normalization.*use normalization='l2', combination='normalized'"),
    ("mgda", "epsilon", 1e-3, "torchjd's MGDA epsilon .* exact .* drop it"),
    ("mgda", "max_iters", 50, "torchjd's MGDA max_iters .* drop it"),
    ("imtl", "pref_vector", [1.0, 2.0, 3.0], "torchjd's pref_vector has no counterpart in 'imtl' .* scale their losses"),
])
def test_peer_option_names_name_ours(method, option, value, message):
    J = torch.randn(3, 10, dtype=torch.float64)
    with pytest.raises(TypeError, match=f"method '{method}' has no option '{option}': {message}"):
        mk.aggregate(J, method, **{option: value})
    model, _ = _model_and_losses()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=message):
        MultiTaskOptimizer(sgd, method, **{option: value})
    assert len(sgd.param_groups) == 1 and not sgd.state and all(p.grad is None for p in model.parameters())


def test_wrapper_classes_name_ours():
    model, _ = _model_and_losses()
    from mtlkernels.optim import MGDA, NashMTL
    with pytest.raises(TypeError, match="CAGrad's c is the authors' alpha: use c=0.4"):
        CAGrad(torch.optim.SGD(model.parameters(), lr=0.1), alpha=0.4)
    with pytest.raises(TypeError, match="num_tasks=3"):
        NashMTL(torch.optim.SGD(model.parameters(), lr=0.1), n_tasks=3)
    with pytest.raises(TypeError, match="use normalization='loss\\+', combination='normalized'"):
        MGDA(torch.optim.SGD(model.parameters(), lr=0.1), mgda_gn="loss+")


def test_an_unknown_option_lists_the_methods_options():
    with pytest.raises(TypeError, match=r"method 'cagrad' has no option 'radius'; its options are \['c', 'rescale', 'sum_scale', 'backend'\]"):
        mk.aggregate(torch.randn(3, 10), "cagrad", radius=0.4)


# -- the command lines -----------------------------------------------------------------------------
def test_validate_triton_without_the_interpreter_says_what_is_needed(monkeypatch, capsys):
    from mtlkernels.validate import backend_problem, main
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--backend", "triton", "--methods", "mean", "--K", "2", "--N", "10", "--no-peers", "--no-wrappers"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA tensors" in err and "set TRITON_INTERPRET=1 before Python starts" in err and "Traceback" not in err
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_problem("triton") is None and backend_problem("auto") is None


def test_demo_help_documents_every_flag(capsys):
    from mtlkernels.demo import main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag, words in [("--tasks", "number of regression tasks"), ("--width", "width of the shared trunk"),
                        ("--seed", "seed of the synthetic data"), ("--repeats", "calls timed per method")]:
        assert flag in out and words in out, flag


def test_validate_help_documents_every_flag(capsys):
    from mtlkernels.validate import main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag, words in [("--methods", "methods to check"), ("--K", "numbers of tasks"), ("--N", "gradient length"),
                        ("--dtype", "dtypes J is given in"), ("--backend", "TRITON_INTERPRET=1"),
                        ("--gradients", "your own model"), ("--peers", "importable peers"), ("--draws", "random draws"),
                        ("--wrappers", "drop-in optimizers"), ("--seed", "seed of the generated cases")]:
        assert flag in out and words in out, flag


@pytest.fixture
def fresh_triton_version():
    """Reads the installed triton again (the version is cached per process)."""
    from mtlkernels import backend
    backend.triton_version.cache_clear()
    yield
    backend.triton_version.cache_clear()


def test_triton_backend_without_triton_names_the_package(monkeypatch, fresh_triton_version):
    from mtlkernels.validate import backend_problem
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError, as when not installed
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match=r"needs the triton package, which is not installed .*mtlkernels\[triton\]"):
        mk.gram(torch.randn(2, 5), backend="triton")
    assert "needs the triton package" in backend_problem("triton")
    assert mk.gram(torch.randn(2, 5)).shape == (2, 2)  # "auto" goes on without it


def test_triton_older_than_the_floor_is_refused_by_name(monkeypatch, fresh_triton_version):
    import types
    from mtlkernels.validate import backend_problem
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.2.0"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match=r"needs triton >= 3\.3 \(tl\.gather\); triton 3\.2 is installed"):
        mk.gram(torch.randn(2, 5), backend="triton")
    assert "triton 3.2 is installed" in backend_problem("triton")
    assert mk.gram(torch.randn(2, 5)).shape == (2, 2)  # "auto" goes on without it


def test_python_m_mtlkernels_prints_the_version_and_the_environment(capsys):
    from mtlkernels.__main__ import main
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mtlkernels {mk.__version__}"
    main([])
    out = capsys.readouterr().out
    assert out.startswith(f"mtlkernels {mk.__version__} (torch {torch.__version__}") and "C++ extension: loaded" in out
