"""The replay wing: workflows, steps and the rule that decides replay; what a call depends
on and its digests; capture of what a step shows; executors. Nothing here knows IPython."""
