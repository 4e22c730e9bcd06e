"""Multi-process benchmark of the billing service against a bare grpc.aio echo
baseline measured in the same run. `make bench` (or `python -m bench`)."""
