"""The engine's quota: lanes of (account, model), shared by every batch, task and process.

- :mod:`~kf2v_tasks.lanes.account`: one account per process (limits, a client per loop);
- :mod:`~kf2v_tasks.lanes.lane`: one lane per (account, model), its slots on the lanes'
  own loop (:mod:`~kf2v_tasks.lanes.engine`);
- :mod:`~kf2v_tasks.lanes.slots`, :mod:`~kf2v_tasks.lanes.gcl`,
  :mod:`~kf2v_tasks.lanes.machine_slots`: a lane's slots across processes (a Prefect global
  concurrency limit, or lock files without a server);
- :mod:`~kf2v_tasks.lanes.rates`: creates/s and queries/s divided between the runs at work;
- :mod:`~kf2v_tasks.lanes.lookahead`: tasks queued ahead, cancelled when a run stops early;
- :mod:`~kf2v_tasks.lanes.ledger`: the ledger a pipeline uses when it names none.
"""
