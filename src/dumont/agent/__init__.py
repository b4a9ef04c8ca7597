"""The Dumont host agent: stdlib-only Python that runs on every host of a pair.

It is shipped to ``<data_dir>/agent/`` over SSH as one zip file (``python3 agent.pyz``) and started as
``serve``: a long-lived process that answers JSON requests, one per line, on stdin/stdout, so a replication pass
costs no extra SSH sessions. It must run on any Python >= 3.8 with nothing installed (a Vast.ai image, a GCP
Debian VM), so its modules import only the standard library and each other (relatively).

Layout of ``data_dir`` (``$DUMONT_DATA_DIR``, default ``/var/lib/dumont``)::

    epoch                    highest epoch this host has accepted (the fence)
    scan-cache.bin           path -> (size, mtime, ctime, inode, hash) so unchanged files are never re-hashed
    snapshots/<seq>/tree/    complete, verified, immutable copies; unchanged files are hard links between them
    snapshots/<seq>/manifest.json, pass.json
    incoming-<epoch>/        the pass being received; renamed into snapshots/ only once verified
    spare/                   the last pruned snapshot, renamed there whole: the next pass's staging tree
    passes.jsonl             every completed pass, append-only
    pair/                    direct mode: the pair key and ssh_config a primary pushes with
    candidate/, candidate.json, candidate-manifest.json
                             a standby's promotion-ready copy of its newest snapshot (no inode shared)
    scrub.json, suspects.json
                             where the scrub stopped; paths every copy of which failed it (sent again)
    promoted.json            what the last promotion made live

A snapshot is never modified after its rename; a pass that dies at any instant leaves only an ``incoming-*``
directory behind, which the next pass discards. Paths travel as ``os.fsdecode`` strings (surrogate escapes),
so any byte in a file name survives the trip through JSON.
"""
