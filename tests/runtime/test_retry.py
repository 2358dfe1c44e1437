"""`RetryPolicy`: what is retried, and how long to wait."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.exceptions import ConfigurationError, LLMError, TaskTimeout, ToolError


def llm_error(status: int, *, retryable: bool) -> LLMError:
    return LLMError(f"HTTP {status}", model="m", status_code=status, retryable=retryable)


def timeout() -> TaskTimeout:
    return TaskTimeout("too slow", task="t", timeout=1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial": -1.0}, {"max": -0.5}, {"rate_limit_attempts": 0}],
    ids=["no-attempts", "negative-initial", "negative-max", "no-rate-limit-attempts"],
)
def test_impossible_policies_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_by_default_retryable_provider_errors_and_timeouts_are_retried() -> None:
    policy = RetryPolicy()

    assert policy.should_retry(llm_error(429, retryable=True))
    assert policy.should_retry(llm_error(503, retryable=True))
    assert policy.should_retry(timeout())


def test_by_default_other_errors_are_not_retried() -> None:
    policy = RetryPolicy()

    assert not policy.should_retry(llm_error(400, retryable=False))
    assert not policy.should_retry(ToolError("bad", tool="search"))
    assert not policy.should_retry(ValueError("bug"))


def test_retry_on_types_replaces_the_default() -> None:
    policy = RetryPolicy(retry_on=(ValueError,))

    assert policy.should_retry(ValueError("flaky"))
    assert not policy.should_retry(timeout())
    assert not policy.should_retry(llm_error(503, retryable=True))


def test_retry_on_predicate_decides() -> None:
    policy = RetryPolicy(retry_on=lambda error: "flaky" in str(error))

    assert policy.should_retry(RuntimeError("flaky network"))
    assert not policy.should_retry(RuntimeError("broken"))


def test_waits_double_from_initial_without_jitter() -> None:
    policy = RetryPolicy(initial=0.5, max=100.0, jitter=False)

    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_waits_are_capped_at_max() -> None:
    policy = RetryPolicy(initial=1.0, max=3.0, jitter=False)

    assert [policy.delay(n) for n in (1, 2, 3, 10)] == [1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.5), (0.999999, 1.0)])
def test_jitter_keeps_each_wait_between_half_and_all_of_it(
    monkeypatch: pytest.MonkeyPatch, draw: float, factor: float
) -> None:
    monkeypatch.setattr("crewflow.retry.random.random", lambda: draw)
    policy = RetryPolicy(initial=2.0, max=100.0)

    assert policy.delay(3) == pytest.approx(8.0 * factor, rel=1e-5)


def test_retry_after_is_a_minimum_wait() -> None:
    policy = RetryPolicy(initial=1.0, max=30.0)

    assert policy.delay(1, retry_after=7.0) == 7.0
    # A shorter Retry-After than the backoff does not shorten it.
    assert RetryPolicy(initial=4.0, jitter=False).delay(1, retry_after=1.0) == 4.0


def test_retry_after_is_capped_at_max() -> None:
    assert RetryPolicy(max=5.0, jitter=False).delay(1, retry_after=60.0) == 5.0


def test_policies_are_immutable() -> None:
    policy = RetryPolicy()

    with pytest.raises(ValidationError, match="frozen"):
        policy.max_attempts = 5  # type: ignore[misc]


def test_policies_are_equal_by_value() -> None:
    assert RetryPolicy(max_attempts=2) == RetryPolicy(max_attempts=2)
    assert hash(RetryPolicy(retry_on=(ValueError,))) == hash(RetryPolicy(retry_on=[ValueError]))
    assert RetryPolicy(max_attempts=2) != RetryPolicy(max_attempts=3)


def test_one_exception_type_is_retried_like_a_tuple_of_one() -> None:
    # A class is callable too: taken as a predicate, it would have retried every error.
    policy = RetryPolicy(retry_on=ValueError)

    assert policy.retry_on == (ValueError,)
    assert not policy.should_retry(RuntimeError("bug"))


@pytest.mark.parametrize("retry_on", [(ValueError, "x"), "flaky", 3, int], ids=repr)
def test_retry_on_takes_exception_types_or_a_predicate(retry_on: object) -> None:
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\(retry_on=.*give exception types"):
        RetryPolicy(retry_on=retry_on)  # type: ignore[arg-type]


def test_wrong_types_are_configuration_errors_naming_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid RetryPolicy: initial: .*'soon'\)$"):
        RetryPolicy(initial="soon")  # type: ignore[arg-type]


def test_crews_and_tasks_take_a_policy_and_check_it() -> None:
    agent = Agent(role="r", goal="g")
    task = Task("x", agent=agent, retry=RetryPolicy(max_attempts=1))
    crew = Crew(tasks=[task], retry=RetryPolicy(max_attempts=4))

    assert task.retry == RetryPolicy(max_attempts=1)
    assert crew.retry.max_attempts == 4
    assert Crew(tasks=[task]).retry == RetryPolicy()
    with pytest.raises(ConfigurationError, match="invalid Crew: retry"):
        Crew(tasks=[task], retry=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be at least 1"):
        Task("x", agent=agent, retry={"max_attempts": 0})
