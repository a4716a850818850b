"""CrossLM's score calibration: a label-skewed client's probabilities corrected for its own label prior."""

from __future__ import annotations

import numpy as np
import pytest

from estuary.errors import ConfigError
from estuary.platform import registry
from estuary.strategies.crosslm import calibrate


def test_calibration_divides_out_the_clients_label_prior() -> None:
    # a client that leans to label 0: its mean prediction over the four samples is (0.86, 0.14)
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.6, 0.4], [0.99, 0.01]])
    adjusted, prior = calibrate(probs, [0, 0, 1, 1])
    assert prior == pytest.approx([0.86, 0.14])
    # p'(y|x) ∝ p(y|x) · 0.5 / π(y): sample 2 → 0.4·0.5/0.14 = 1.4286 against 0.6·0.5/0.86 = 0.3488
    assert adjusted[2, 1] == pytest.approx(1.4286 / (1.4286 + 0.3488), abs=1e-4)  # 0.804: now agrees
    assert adjusted[3, 1] == pytest.approx(0.0357 / (0.0357 + 0.5756), abs=1e-3)  # 0.058: still rejected
    assert adjusted[0, 0] == pytest.approx(0.5233 / (0.5233 + 0.3571), abs=1e-4)
    assert np.allclose(adjusted.sum(axis=1), 1.0)
    # an unbiased client on a balanced batch is left as it is
    fair = np.array([[0.8, 0.2], [0.2, 0.8]])
    assert np.allclose(calibrate(fair, [0, 1])[0], fair)


def test_calibration_is_a_checked_choice() -> None:
    assert registry.build_params("crosslm", {}).calibration == "prior"
    assert registry.build_params("crosslm", {"calibration": "none"}).calibration == "none"
    with pytest.raises(ConfigError, match="calibration must be one of prior, none .got 'platt'"):
        registry.build_params("crosslm", {"calibration": "platt"})
