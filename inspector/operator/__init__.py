"""What administrators, SREs and consumers ask of the inspector beside notifications.

``diagnostics`` serves Diagnostics and Hosts; ``faultview`` answers
QueryFaults and the Subscribe snapshot from the active alarms. Imports
``response`` and ``southbound`` (to read them), never ``core``: the replica
it reads is a ``Protocol``.
"""
