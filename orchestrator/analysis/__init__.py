"""finish: a study directory -> tables, statistics, report. results (open a study),
tables (runs.parquet), summary + stats + pareto + costs (summary.parquet), headlines,
charts, report (report.html), compare, export, formatting (numbers as text), and
finish.finish_study(), the one end of every study."""
