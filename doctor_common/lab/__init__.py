"""A whole small cloud on this machine, for the demo, tests and benches; no daemon imports it.

``cloud`` (``Lab``): network-namespace hosts with agents and virtual BMCs, one
inspector; ``replicated`` (``HaLab``, ``LocalEtcd``): inspector replicas in
their own processes over a local etcd; ``vbmc``: the virtual BMC
(``python -m doctor_common.lab.vbmc``) on pyghmi's IPMI server; ``demo``: ``make demo``.
Not in the wheel (pyproject.toml excludes it): it runs from a source tree's editable install.
"""
