"""NFVI maintenance: the administrators' sessions, the owners' consent, emptying hosts, rollback."""
