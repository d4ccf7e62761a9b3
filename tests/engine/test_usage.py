import pytest

from app.engine.lifecycle import AgentStatus, JobStatus, agent_may_enter, job_may_enter
from app.engine.usage import Usage


def test_adding_keeps_what_is_known() -> None:
    a = Usage(10, 5, 15, None)
    b = Usage(None, None, None, 0.25)
    assert a + b == Usage(10, 5, 15, 0.25)
    assert a + a == Usage(20, 10, 30, None)
    assert Usage() + Usage() == Usage()


def test_empty_usage_is_false() -> None:
    assert not Usage()
    assert Usage(cost_usd=0.0)
    assert Usage(0, 0, 0)


def test_columns_and_tokens() -> None:
    u = Usage(1, 2, 3, 0.5)
    assert u.columns() == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cost_usd": 0.5,
        "estimated_tokens": None,
        "estimated_cost_usd": None,
        "cached_tokens": None,
        "reasoning_tokens": None,
    }
    assert Usage.from_columns(u.columns()) == u
    assert u.tokens() == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert u.priced(None).cost_usd is None


def test_finished_agents_change_only_back_to_pending_by_a_retry() -> None:
    for new in AgentStatus:
        for old in (AgentStatus.completed, AgentStatus.failed, AgentStatus.skipped):
            assert agent_may_enter(new, old) == (new is AgentStatus.pending)
    assert agent_may_enter(AgentStatus.running, AgentStatus.running)
    assert not agent_may_enter(AgentStatus.pending, AgentStatus.running)


def test_finished_jobs_change_only_back_to_running_by_a_retry() -> None:
    for new in JobStatus:
        for old in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled):
            retried = new is JobStatus.running and old is not JobStatus.completed
            assert job_may_enter(new, old) == retried
    assert not job_may_enter(JobStatus.completed, JobStatus.queued)


def test_an_estimate_keeps_its_flag_through_sums() -> None:
    reported = Usage(10, 5, 15, 0.01)
    guessed = Usage(100, 50, 150, 0.2).as_estimate()
    assert not reported.estimated and guessed.estimated
    total = reported + guessed
    assert (total.total_tokens, total.estimated_tokens) == (165, 150)
    assert total.cost_usd == pytest.approx(0.21) and total.estimated_cost_usd == 0.2
    assert total.estimated
    # Unpriced: the tokens still say it is an estimate.
    assert Usage(1, 1, 2).as_estimate().estimated
