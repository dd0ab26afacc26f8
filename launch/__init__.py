"""Cluster launching (installed as `ssl_bf.launch`): submitit jobs, sweeps as job arrays, chained
evaluation. See `ssl-bf submit --help`; the sweep report is in `ssl_bf.report`."""
from .options import LaunchError, LaunchOptions, make_options
from .job import SubcommandJob
from .submission import Submission, submit

__all__ = ["LaunchError", "LaunchOptions", "SubcommandJob", "Submission", "make_options", "submit"]
