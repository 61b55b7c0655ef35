"""Supervised services: workers that hand a call's jobs to one another are idle only when no job
is left in any of them."""

from appliance.service import Worker, settled


class HandingOn(Worker):
    """A worker (not started: its jobs stay queued) whose queue is looked at while the job of
    `source` finishes and, as its last step, queues the next one here: what the catalogue writer
    and the finaliser do for every call."""

    def __init__(self, name: str, source: Worker):
        super().__init__(name)
        self.source = source

    @property
    def busy(self) -> bool:
        was_busy = super().busy
        if self.source.busy:
            self.submit(lambda: None)
            self.source.jobs.get()
            self.source.jobs.task_done()
        return was_busy


def test_a_job_handed_on_while_the_workers_are_looked_at_is_not_taken_for_idle():
    finaliser = Worker("finaliser")
    writer = HandingOn("writer", finaliser)
    finaliser.submit(lambda: None)
    # Looked at one after the other, each seems idle: the job moved from the one not yet looked
    # at to the one looked at first.
    assert not settled([writer, finaliser])
    assert writer.busy and not finaliser.busy
    writer.jobs.get()
    writer.jobs.task_done()
    assert settled([writer, finaliser])
