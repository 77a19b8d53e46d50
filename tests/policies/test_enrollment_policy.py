"""The policy file's [enrollment] section and per-purpose require_liveness."""

from __future__ import annotations

import pytest

from consentry.policies import codes
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConfigurationError
from consentry.policies.policy import load_policy, parse_policy


def test_the_default_policy_reserves_nothing_and_asks_three_poses_within_two_minutes() -> None:
    policy = load_policy(None)
    rules = policy.enrollment
    assert (rules.challenge_ttl_s, rules.pose_count, rules.front_max_deg, rules.turn_min_deg) == (
        120,
        3,
        10,
        20,
    )
    assert rules.liveness_model is None and policy.liveness_required([p.value for p in Purpose]) == []


def test_liveness_is_required_by_the_enrollment_list_or_by_a_purposes_own_rules() -> None:
    policy = parse_policy(
        'version = "x"\n[enrollment]\nrequire_liveness_for = ["adapter_training"]\n'
        "[purposes.marketing]\nrequire_liveness = true\n",
        "test",
    )
    assert policy.liveness_required(["portrait", "marketing", "adapter_training"]) == [
        Purpose.adapter_training,
        Purpose.marketing,
    ]
    assert policy.liveness_required(["portrait"]) == []


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ("challenge_ttl_s = 121", "enrollment.challenge_ttl_s"),
        ("pose_count = 2", "enrollment.pose_count"),  # fewer than left, front and right
        ("front_max_deg = 20\nturn_min_deg = 20", "dead band"),
        ('liveness_model = "not a path"', "enrollment.liveness_model"),
        ('liveness_model_weights = "/w.onnx"', "liveness_model_weights needs liveness_model"),
        ('require_liveness_for = ["selfies"]', "enrollment.require_liveness_for"),
    ],
)
def test_a_bad_enrollment_section_is_refused_with_its_place(section: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_policy(f'version = "x"\n[enrollment]\n{section}\n', "policy.toml")
    assert err.value.code == codes.POLICY_INVALID and named in err.value.detail
