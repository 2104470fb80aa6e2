"""doctor-inspector: liveness, policy, correlation, fencing and actions; serves every northbound API.

At the top only the daemon: ``main`` (entry point), ``config`` (its TOML) and
``core`` (the wiring of one replica). The rooms below it, in the order they
may import each other (``docs/architecture.md``): ``operator`` →
``southbound`` → ``response`` → ``ha``.
"""
