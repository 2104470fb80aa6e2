"""doctor-inspector: liveness, policy, correlation, fencing and actions; serves every northbound API."""
