namespace BlockRepl.Core.Replication;

/// <summary>
/// The checksum probes of one <see cref="PeerLink"/>: those waiting for the peer's answer, the resync probes not
/// settled yet, and the counters status shows.
/// </summary>
/// <remarks>
/// The resync invariant of <see cref="PeerLink"/> extends to checksum resync: a range taken from the bitmap for
/// a probe is outstanding until the probe is settled — then only its differing chunks go back to the bitmap (the
/// data pass sends them) — or until the stream closes, which puts the whole range back. A resync cannot end while
/// a probe is outstanding. Not thread-safe on its own: the owning link calls every member under its lock.
/// </remarks>
internal sealed class ChecksumProbes
{
    private readonly Dictionary<ulong, ChecksumProbe> _waiting = [];
    private readonly List<ChecksumProbe> _unsettled = [];
    private ulong _nextId;
    private long _sent;
    private long _replyBytes;
    private long _equalBytes;

    /// <summary>Probes queued, hash bytes received, and resync bytes not sent because the hashes matched.</summary>
    public (long Requests, long ReplyBytes, long EqualBytes) Counters => (_sent, _replyBytes, _equalBytes);

    /// <summary>A checksum resync's probe is still outstanding (the resync may not end).</summary>
    public bool AnyUnsettled => _unsettled.Count > 0;

    /// <summary>
    /// True when [<paramref name="start"/>, <paramref name="end"/>) overlaps a resync probe that is not settled: its
    /// range was taken out of the bitmap, and until it is settled it may still differ on the peer, like a dirty one.
    /// </summary>
    public bool OverlapsUnsettled(long start, long end)
    {
        foreach (var pending in _unsettled)
        {
            if (pending.Offset < end && start < pending.Offset + pending.Length)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Gives the probe its id and keeps it until the peer answers (and, for a resync probe, until settled).</summary>
    public void Add(ChecksumProbe probe)
    {
        if (probe.Resync)
        {
            _unsettled.Add(probe);
        }

        probe.Id = ++_nextId;
        _waiting.Add(probe.Id, probe);
        _sent++;
    }

    /// <summary>The peer's answer. False when no such probe is waiting or the hash count is wrong (a protocol violation).</summary>
    public bool TryAnswer(ulong id, ReadOnlySpan<byte> hashes)
    {
        if (!_waiting.TryGetValue(id, out var probe) || hashes.Length != probe.Chunks * ChecksumProbe.HashBytes)
        {
            return false;
        }

        _waiting.Remove(id);
        _replyBytes += hashes.Length;
        probe.PeerHashes.TrySetResult(hashes.ToArray());
        return true;
    }

    /// <summary>Marks a resync probe settled. False when it already was (a stream close put its range back).</summary>
    public bool TrySettle(ChecksumProbe probe, long equalBytes)
    {
        if (probe.Settled)
        {
            return false;
        }

        probe.Settled = true;
        _unsettled.Remove(probe);
        _equalBytes += equalBytes;
        return true;
    }

    /// <summary>The stream closed: unanswered probes fail, and unsettled resync ranges go back to <paramref name="bitmap"/>.</summary>
    public void ReturnAll(PersistentBitmap bitmap)
    {
        foreach (var probe in _waiting.Values)
        {
            probe.PeerHashes.TrySetException(new IOException("the replication stream ended before the peer answered the checksum request"));
        }

        _waiting.Clear();
        foreach (var probe in _unsettled)
        {
            probe.Settled = true;
            bitmap.Mark(probe.Offset, probe.Length);
        }

        _unsettled.Clear();
    }
}
