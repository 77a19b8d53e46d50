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


BROKEN = """version = "x"

[prompt]
deny_terms = ["gore", ""]
semantic = true

[[prompt.categories]]
name = "ok"
examples = ["one"]

[[prompt.categories]]
name = "Bad Name"
examples = [
    "fine",
    "%s",
]
threshold = 1.5

[purposes.selfies]
deny_terms = []
""" % ("x" * 301)


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("prompt.deny_terms.1", 4),  # an array element on its key's line
        ("prompt.categories.1.name", 12),  # the second [[prompt.categories]]
        ("prompt.categories.1.examples.1", 15),  # an element of a multi-line array
        ("prompt.categories.1.threshold", 17),
        ("purposes.selfies", 19),  # not a purpose: the table's header
    ],
)
def test_schema_errors_name_the_line_of_their_key(key: str, line: int) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(BROKEN, "p.toml")
    assert f"line {line}: {key}" in caught.value.detail


def test_a_missing_key_is_reported_at_its_table() -> None:
    text = 'version = "x"\n\n[prompt]\nsemantic = false\n\n[[prompt.categories]]\nname = "a"\n'
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(text, "p.toml")
    assert "line 6: prompt.categories.0.examples: Field required" in caught.value.detail


def test_inline_tables_and_dotted_keys_are_located() -> None:
    from consentry.policies.policy_lines import key_lines

    text = (
        'version = "x"  # comment\n'
        "prompt.semantic = false\n"
        "[purposes]\n"
        'marketing = { deny_terms = ["a", "b"], require_liveness = true }\n'
        'editorial.deny_terms = [\n  """multi\nline""",\n  \'lit\',\n]\n'
    )
    lines = key_lines(text)
    assert lines[("version",)] == 1 and lines[("prompt", "semantic")] == 2
    assert lines[("purposes", "marketing", "deny_terms", 1)] == 4
    assert lines[("purposes", "marketing", "require_liveness")] == 4
    assert lines[("purposes", "editorial", "deny_terms", 0)] == 6
    assert lines[("purposes", "editorial", "deny_terms", 1)] == 8


@pytest.mark.parametrize(
    ("prompt_section", "needle"),
    [
        ('semantic = true\n', "needs at least one"),
        (
            '[[prompt.categories]]\nname = "a"\nexamples = ["x"]\n'
            '[[prompt.categories]]\nname = "a"\nexamples = ["y"]\n',
            "unique",
        ),
    ],
)
def test_categories_must_make_sense(prompt_section: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(f'version = "x"\n[prompt]\n{prompt_section}', "p.toml")
    assert needle in caught.value.detail


def test_the_default_policy_ships_the_four_categories_with_the_semantic_rule_on() -> None:
    prompt = load_policy(None).prompt
    assert prompt.semantic
    assert {"sexual", "graphic_violence", "humiliation", "minors"} <= {c.name for c in prompt.categories}
    assert all(len(c.examples) >= 10 for c in prompt.categories)


def test_a_missing_policy_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_policy(tmp_path / "absent.toml")
    assert "does not exist" in caught.value.detail
