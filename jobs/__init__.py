"""Training jobs started from the app: each one the training CLI in a process of its own.

``store`` keeps one folder per job, ``manager`` runs, queues, cancels and resumes them,
``commands`` turns the Train tab's controls into a checked command line, ``intake`` opens the
data (zips safely, server folders under the data root only) and ``service`` is what the tab calls.
"""
