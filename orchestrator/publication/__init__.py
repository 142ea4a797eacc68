"""Publication mode: checks (refuse to start unless everything is pinned), lock (the
study.lock.yaml / environment.json / REPRODUCE.md bundle) and reproduce (re-run a
locked study and judge the new numbers against the original)."""
