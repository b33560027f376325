"""The workflow code of rollouts started before the state machine (patch `state-machine-v2`).

Frozen: runs whose history has no `state-machine-v2` marker replay and go on here, on
the code they were recorded with, until they close. Delete once none remain open
(`temporal workflow list --query "ExecutionStatus='Running'"` and their start time).
"""
