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
    assert {c.method for c in checks} == set(METHODS)
    assert {c.against for c in checks if c.against == "reference"} == {"reference"}
    expected_peers = {p for p, ok in installed_peers().items() if ok}
    assert {c.against.split()[0] for c in checks} == {"reference"} | expected_peers
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
