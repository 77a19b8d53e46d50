"""The policy file: the shipped default validates, mistakes are named, versions travel."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError
from consentry.policies.policy import load_policy, parse_policy


def test_the_shipped_default_policy_is_valid() -> None:
    policy = load_policy(None)
    assert policy.version
    assert {"nude", "naked", "nsfw"} <= set(policy.prompt.deny_terms)


def test_purpose_rules_add_to_the_deployment_terms() -> None:
    policy = parse_policy(
        'version = "t1"\n[prompt]\ndeny_terms = ["gore"]\n[purposes.marketing]\ndeny_terms = ["endorse"]\n',
        "t",
    )
    assert policy.deny_terms_for("marketing") == ("gore", "endorse")
    assert policy.deny_terms_for("portrait") == ("gore",)
    assert policy.deny_terms_for(None) == ("gore",)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('version = "x"\n[prompt\n', "line 2"),  # TOML syntax: the line is named
        ('[prompt]\ndeny_terms = []\n', "version"),  # a required key
        ('version = "x"\n[purposes.selfies]\n', "purposes.selfies"),  # not a purpose
        ('version = "x"\n[content]\nthreshold = 1.5\n', "content.threshold"),
        ('version = "x"\n[enrollment]\nchallenge_ttl_s = 600\n', "enrollment.challenge_ttl_s"),
        ('version = "x"\nunknown_section = 1\n', "unknown_section"),
    ],
)
def test_mistakes_are_refused_with_their_place(text: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(text, "p.toml")
    assert caught.value.code == codes.POLICY_INVALID
    assert needle in caught.value.detail and "p.toml" in caught.value.detail


def test_an_unreadable_policy_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_policy(tmp_path / "absent.toml")
    assert caught.value.code == codes.POLICY_INVALID
