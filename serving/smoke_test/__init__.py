"""The smoke test: serve a version, ask every signature over REST and gRPC, compare with the
same version in-process, bless it or not (`python -m serving.smoke_test`).

verdict.py   run_smoke_test: start (or reach) a server, run the checks, write the verdict
checks.py    the requests per signature and protocol, the comparison rule, latencies
recorded.py  the same as a SmokeTest execution in ML Metadata
command.py   the command line
"""
