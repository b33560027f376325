"""One module per notifier kind of the plan's `notify` list; activities/notify.py runs them.

Each kind's `send(...)` returns None when delivered, `SKIPPED` when the event is not for
that kind (e.g. PagerDuty only hears about escalations), or the error text when it was
not delivered after its retries. None of them raises for a receiver's failure.
"""
