"""The views wing: the log as pandas DataFrames (runs, steps, events, experiments), read
without ever unpickling a stored value."""
