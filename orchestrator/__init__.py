"""The host side of llem (installed as llenergymeasure.orchestrator): a study's path
reads top to bottom through its packages, study -> build -> execution -> analysis,
with publication beside them and the entry points (api.py, cli/, terminal.py) on top.
errors.py and notify.py are what every package shares."""
