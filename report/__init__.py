"""Reports on finished or running runs (installed as `ssl_bf.report`).

- `sweep_table`: `ssl-bf sweep-report`, the mean ± std table of results.json over a sweep
- `run_report`: `ssl-bf report`, plots and report.md/report.json for a run or a folder of runs
- `records`: finding a folder's runs, grouping them into variants, metrics.jsonl -> curves
- `inputs`: sweep.json and results.json read and checked (a run that cannot be read is listed
  with the reason, never dropped), output folders refused before any work, the exit codes
- `plots`: the figures (matplotlib, Agg); `tsne`: the 2-D maps of test embeddings

Layering: reads run folders and sweep.json through the core (`ssl_bf.sweep_file`,
`ssl_bf.metrics`) and embeddings files through `ssl_bf.eval`; never imports `ssl_bf.launch`.
"""


class ReportError(ValueError):
    """Nothing to report on (no such folder, no runs) or an unreadable run file; the message says which."""
