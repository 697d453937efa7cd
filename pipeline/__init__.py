"""The embedding job: config, graph assembly and the command line (`python -m pipeline`)."""
