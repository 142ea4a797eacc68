"""Host side of llem: studies, sweeps, run plans, runners, results, CLI."""
