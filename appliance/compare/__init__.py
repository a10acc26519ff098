"""Compare mode (issue 16): does the target answer each replayed request as the online server did?

Sans-io pieces, no sockets and no clocks of their own:

    turns.py    TurnAssembler: answer segments -> Turn records (one per answer), on both hosts
    http.py     HTTP/1.x response heads and request lines, from the bytes the turns kept
    verdict.py  Verdicts: pairs a session's online and target turns by index -> Comparison + counters
    report.py   DiffReport: differences grouped by (method, path), latency histograms, JSON lines

A target's turns cross from interceptd to tcpcopyd as wire.KIND_TURNS batches (appliance/wire.py).
"""
