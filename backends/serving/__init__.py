"""The serving scenario: a backend's own OpenAI-compatible server, driven over loopback by a
seeded load (config.py: the `serving:` section; schedule.py: arrivals; client.py: the load
generator; metrics.py: serving metrics; spec.py: how a backend describes its server). The
run itself is harness/serving.py."""
