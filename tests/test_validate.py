"""The validation command in a small configuration: every method checked against the reference
and every installed peer, and everything passes."""
import pytest
import torch

from mtlkernels import METHODS
from peers import installed_peers
from mtlkernels.validate import main, relative_error


def test_validate_passes_everywhere(capsys, tmp_path):
    saved = tmp_path / "J.pt"
    torch.save(torch.randn(4, 300, dtype=torch.float64), saved)
    checks = main(["--K", "2", "3", "--N", "60", "--gradients", str(saved)])
    out = capsys.readouterr().out
    assert {c.method for c in checks} == set(METHODS) | {"wrappers"}
    assert {c.against for c in checks if c.against == "reference"} == {"reference"}
    expected_peers = {p for p, ok in installed_peers().items() if ok}
    assert {c.against.split()[0] for c in checks} == {"reference", "invariants", "behaviour"} | expected_peers
    assert {c.method for c in checks if c.against == "invariants"} == set(METHODS)
    assert any(c.case == str(saved) for c in checks)
    failed = [c for c in checks if not c.passed]
    assert not failed, out
    assert f"{len(checks)} passed, 0 failed" in out


def test_error_measure_catches_a_wrong_direction():
    J = torch.randn(3, 20, dtype=torch.float64)
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    d = w @ J
    assert relative_error(d, d, w, J, 1e-9) == 0
    assert relative_error(d * (1 + 1e-6), d, w, J, 1e-9) > 1e-9
    # cancelling terms (d_ref = 0): measured against the rounding floor of the terms, still strict
    J2 = torch.stack([J[0], -J[0]])
    w2 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert relative_error(torch.zeros(20, dtype=torch.float64), w2 @ J2, w2, J2, 1e-9) == 0
    assert relative_error(1e-6 * J[0], w2 @ J2, w2, J2, 1e-9) > 1e-9  # 1e-6 of a term: far above rounding


def test_bad_gradients_file(tmp_path):
    saved = tmp_path / "bad.pt"
    torch.save(torch.randn(5), saved)
    with pytest.raises(SystemExit, match="expected a saved"):
        main(["--K", "2", "--N", "10", "--gradients", str(saved), "--no-peers", "--methods", "mean"])


def test_peer_that_cannot_be_imported_is_left_out_with_its_reason(capsys, monkeypatch):
    from mtlkernels.testing import peers

    reason = "import LibMTL.weighting fails: ModuleNotFoundError: No module named 'torchvision'"
    real = peers.missing_reason
    monkeypatch.setattr(peers, "missing_reason", lambda peer: reason if peer == "libmtl" else real(peer))
    checks = main(["--K", "2", "--N", "10", "--methods", "pcgrad"])
    assert not any(c.against.startswith("libmtl") for c in checks)
    assert f"libmtl left out: {reason}" in capsys.readouterr().out


def test_invariant_violation_sees_each_broken_constraint():
    from mtlkernels.validate import invariant_violation

    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert invariant_violation("nash_mtl", t(0.5, 0.0, 0.2), {"dropped_tasks": [1]}) == 0
    assert invariant_violation("nash_mtl", t(0.5, -1e5, 0.2), {"dropped_tasks": []}) == pytest.approx(1e5)
    assert invariant_violation("nash_mtl", t(0.5, 0.3, 0.2), {"dropped_tasks": [1]}) == pytest.approx(0.3)
    assert invariant_violation("mgda", t(0.25, 0.75), {}) == 0
    assert invariant_violation("mgda", t(0.5, 0.6), {}) == pytest.approx(0.1)
    assert invariant_violation("mgda", t(1.5, -0.5), {}) == pytest.approx(0.5)
    assert invariant_violation("imtl", t(0.3, 0.7), {}) == pytest.approx(0, abs=1e-15)
    assert invariant_violation("imtl", t(0.0, 0.0), {}) == 0
    assert invariant_violation("imtl", t(0.3, 0.3), {}) == pytest.approx(0.4)
    floor = 1 / (2 * 1.25)  # CAGrad at c = 0.5, rescale = 1: w = (1/K + u)/(1 + c²), u ≥ 0
    assert invariant_violation("cagrad", t(floor, floor + 1), {}) == 0
    assert invariant_violation("cagrad", t(floor / 2, floor), {}) == pytest.approx(0.5)
    assert invariant_violation("mean", t(0.5, 0.5), {}) == 0
    assert invariant_violation("pcgrad", t(1e40, -3.0), {}) == 0
    assert invariant_violation("pcgrad", t(float("nan"), 1.0), {}) == float("inf")


def test_validate_runs_the_invariant_and_wrapper_families(capsys):
    checks = main(["--K", "3", "--N", "20", "--no-peers", "--draws", "3", "--methods", "nash_mtl", "mgda"])
    invariants = [c for c in checks if c.against == "invariants"]
    assert len(invariants) == 3 * 4 * 2  # draws × Grams per draw × methods
    assert all(c.case.startswith("float32 Γ") for c in invariants)
    wrappers = [c for c in checks if c.method == "wrappers"]
    assert len(wrappers) == 4 + 16 and all(c.passed for c in wrappers), capsys.readouterr().out


def test_every_wrapper_is_checked_against_its_reference():
    from mtlkernels import optim
    from mtlkernels.validate import wrapper_reference_checks

    checks = wrapper_reference_checks(seed=3, backend="auto")
    names = {c.case.split(":")[0] for c in checks}
    gramian = {name for name in optim.__all__ if isinstance(getattr(optim, name), type)
               and issubclass(getattr(optim, name), optim.MultiTaskOptimizer)
               and not issubclass(getattr(optim, name), optim.LossWeighting)} - {"MultiTaskOptimizer", "MGDAUB"}
    assert names == gramian | {"FAMO", "UW", "DWA", "RLW", "GradNorm"}
    assert all(c.against == "reference" and c.passed for c in checks), [(c.case, c.error) for c in checks]


def test_wrapper_reference_checks_fail_on_a_wrong_reference(monkeypatch):
    """A check fails when the reference it compares with is changed: CAGrad's c, DWA's
    temperature, FAMO's logit update."""
    from mtlkernels import validate
    from mtlkernels.reference import loss_weighting

    monkeypatch.setitem(validate.GRAMIAN_WRAPPERS, "CAGrad", ("cagrad", lambda last: {"c": 0.4, "rescale": 1}))
    dwa_weights = loss_weighting.dwa_weights
    monkeypatch.setattr(loss_weighting, "dwa_weights", lambda averages, temperature, K: dwa_weights(averages, 2 * temperature, K))
    famo_logit_step = loss_weighting.famo_logit_step
    monkeypatch.setattr(loss_weighting, "famo_logit_step",
                        lambda *args, lr, **kw: famo_logit_step(*args, lr=1.5 * lr, **kw))
    failed = {c.case.split(":")[0] for c in validate.wrapper_reference_checks(seed=0, backend="auto") if not c.passed}
    assert failed == {"CAGrad", "DWA", "FAMO"}
