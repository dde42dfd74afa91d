"""The words a run's state is spelled with, shared by the library and the CLI.

A run's `status` column holds one of IN_PROGRESS, SUCCESS, ERROR. The views
refine IN_PROGRESS by liveness: LIVE while its wrapper's lease is in the
future, DEAD once the lease ran out, RUNNING when it has no lease (started by
`jobs-cli start`, unsupervised). Kept apart so the CLI can offer them as
choices without importing the query modules.
"""

IN_PROGRESS = "in_progress"
SUCCESS = "success"
ERROR = "error"
ENDED = (SUCCESS, ERROR)

LIVE = "live"
DEAD = "dead"
RUNNING = "running"
# What a run shows as: an ended run's status, or the liveness of an in_progress one.
STATES = (SUCCESS, ERROR, LIVE, DEAD, RUNNING)
# What `list --status` accepts: a state, or in_progress for all three kinds.
STATUS_FILTERS = (*STATES, IN_PROGRESS)
