"""Cluster launching (installed as `ssl_bf.launch`): submitit jobs, sweeps as job arrays, chained
evaluation, sweep reports. See `ssl-bf submit --help`."""
from .options import LaunchError, LaunchOptions, make_options
from .job import SubcommandJob
from .submission import Submission, submit

__all__ = ["LaunchError", "LaunchOptions", "SubcommandJob", "Submission", "make_options", "submit"]
