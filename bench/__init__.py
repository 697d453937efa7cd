"""Throughput benchmark: this pipeline against the peers users would otherwise write, in one run.

`python -m bench --help`; the arms, scenarios and what bounds each number are described in
`bench/__main__.py`.
"""
