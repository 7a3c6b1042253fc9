"""Validation of the simulator's configuration and fault models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from subswitch.simulator.config import Faults, SimulatorConfig


@pytest.mark.parametrize("field", [name for name in Faults.model_fields if name.startswith("p_")])
@pytest.mark.parametrize("value", [-0.01, 1.01])
def test_probabilities_outside_zero_to_one_are_refused(field: str, value: float) -> None:
    # Given a probability just outside 0..1
    # When faults are built with it
    # Then validation fails naming the field
    with pytest.raises(ValidationError, match=field):
        Faults.model_validate({field: value})


def test_default_faults_inject_nothing() -> None:
    # Given the default faults
    faults = Faults()
    # Then every fault probability and delay is zero
    assert faults.p_429 == 0
    assert [faults.p_500, faults.p_502, faults.p_503, faults.p_504] == [0, 0, 0, 0]
    assert (faults.p_slow, faults.p_drop, faults.p_lost_response) == (0, 0, 0)
    assert (faults.latency_ms, faults.jitter_ms) == (0, 0)


def test_unknown_fault_names_are_refused() -> None:
    # When faults are built with a misspelt name
    # Then validation fails
    with pytest.raises(ValidationError, match="p_5000"):
        Faults.model_validate({"p_5000": 0.5})


def test_faults_do_not_coerce_strings() -> None:
    # When a boolean fault is given as a string
    # Then it is refused rather than guessed
    with pytest.raises(ValidationError):
        Faults.model_validate({"retry_after_http_date": "yes"})


@pytest.mark.parametrize("orgs", [("bad org",), ("a/b",), ("telco", "telco"), ()])
def test_org_ids_must_be_path_safe_and_distinct(orgs: tuple[str, ...]) -> None:
    # When a config names an unusable or repeated org (or none)
    # Then it is refused
    with pytest.raises(ValidationError):
        SimulatorConfig(orgs=orgs)


def test_config_repr_hides_tokens_and_secret() -> None:
    # Given a config with a static token and a token secret
    config = SimulatorConfig(tokens=("super-secret-token",), token_secret="s" * 40)
    # Then neither appears in its repr
    assert "super-secret-token" not in repr(config)
    assert "s" * 40 not in repr(config)


def test_short_token_secret_is_refused() -> None:
    # When the HS256 secret is shorter than 32 characters
    # Then the config is refused
    with pytest.raises(ValidationError, match="token_secret"):
        SimulatorConfig(token_secret="short")
