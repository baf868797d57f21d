"""The chaos harness, after Jepsen: a cluster on loopback behind fault proxies (``cluster``,
``netproxy``, ``rpc_faults``), seeded fault schedules (``nemesis``), recorded histories
(``history``), checkers (``checkers``, ``linearizability``, and each system's own), and a report
(``report``); ``runner`` puts them together and ``systems`` plugs each system in."""
