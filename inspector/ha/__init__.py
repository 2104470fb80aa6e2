"""High availability: the election in etcd, fenced writes, the campaign loop, redirects to the leader.

``election`` campaigns for the leader key, ``term`` is one period of
leadership, ``lease`` keeps it alive (and steps down in time);
``etcd_config`` connects, ``etcd_store`` writes the leader's state fenced by
its token; ``leadership`` runs lead/follow; ``redirects`` points agents and
consumers at the leader. Imports ``notifier`` (the etcd log and the
subscription records) and nothing else of the inspector.
"""
