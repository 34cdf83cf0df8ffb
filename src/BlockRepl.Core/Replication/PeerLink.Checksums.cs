using System.Diagnostics;

namespace BlockRepl.Core.Replication;

/// <summary>
/// A request for the peer's chunk hashes of one range at one position of the stream (online verify, checksum
/// resync). The requester reads its own image for the same range in the critical section (the volume's ordering
/// lock) that queues the probe, so both sides hash the same point of the write order.
/// </summary>
internal sealed class ChecksumProbe(long offset, int length, int chunkBytes, bool resync)
{
    /// <summary>SHA-256 length: one hash per chunk on both sides.</summary>
    public const int HashBytes = 32;

    /// <summary>Assigned by <see cref="PeerLink.TryQueueProbe"/>, unique within the link's life.</summary>
    public ulong Id { get; set; }

    public long Offset { get; } = offset;

    public int Length { get; } = length;

    public int ChunkBytes { get; } = chunkBytes;

    /// <summary>Part of a checksum resync: its range was taken from the bitmap and is outstanding until settled.</summary>
    public bool Resync { get; } = resync;

    public int Chunks => (Length + ChunkBytes - 1) / ChunkBytes;

    /// <summary>Verify only: per chunk, whether the bitmap marked it dirty when the probe was queued (not compared).</summary>
    public bool[]? DirtyAtProbe { get; set; }

    /// <summary>This node's hashes, filled by the requester after the probe was queued.</summary>
    public byte[]? LocalHashes { get; set; }

    /// <summary>The peer's hashes; fails when the stream ends first.</summary>
    public TaskCompletionSource<byte[]> PeerHashes { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The last seq assigned when the probe was queued: the peer hashed after applying it and before any later one.</summary>
    public ulong SeqBefore { get; set; }

    /// <summary>Resync only: guarded by the link's lock; true once compared, or returned to the bitmap by a stream close.</summary>
    public bool Settled { get; set; }
}

/// <summary>Checksum probes on the link: queued in order with the records, answered by the peer, settled.</summary>
/// <remarks>
/// The resync invariant of <see cref="PeerLink"/> extends to checksum resync: a range taken from the bitmap for
/// a probe is outstanding until the probe is settled — then only its differing chunks go back to the bitmap (the
/// data pass sends them) — or until the stream closes, which puts the whole range back. A resync cannot end while
/// a probe is outstanding.
/// </remarks>
internal sealed partial class PeerLink
{
    private readonly Dictionary<ulong, ChecksumProbe> _probes = [];
    private readonly List<ChecksumProbe> _unsettledResyncProbes = [];
    private ulong _nextProbeId;
    private long _probesSent;
    private long _probeReplyBytes;
    private long _probeEqualBytes;
    private volatile bool _peerChecksums;

    /// <summary>The peer answers checksum probes (it announced the feature in its handshake reply); set per stream.</summary>
    public bool PeerChecksums
    {
        get => _peerChecksums;
        set => _peerChecksums = value;
    }

    /// <summary>Probes queued, hash bytes received, and resync bytes not sent because the hashes matched.</summary>
    public (long Requests, long ReplyBytes, long EqualBytes) ChecksumCounters
    {
        get
        {
            lock (_gate)
            {
                return (_probesSent, _probeReplyBytes, _probeEqualBytes);
            }
        }
    }

    /// <summary>Why a probe cannot be queued now, or null when it can.</summary>
    public string? ProbeRefusal()
    {
        lock (_gate)
        {
            return ProbeRefusalLocked();
        }
    }

    private string? ProbeRefusalLocked() =>
        !_state.Streaming || !_state.Accepted ? "the peer is not connected"
        : _state.Ahead ? "the link is ahead (async queue overflowed); the peer is behind"
        : !_peerChecksums ? "the peer does not answer checksum requests (an older version)"
        : null;

    /// <summary>
    /// Queues a probe in order with the records. Called under the volume's ordering lock, right after this node
    /// read the range. False (and, for a resync probe, its range back in the bitmap) when there is no usable stream.
    /// For a verify probe, records which chunks may differ legitimately now: dirty in the bitmap, or under a
    /// checksum resync probe that is not settled yet.
    /// </summary>
    public bool TryQueueProbe(ChecksumProbe probe)
    {
        lock (_gate)
        {
            if (ProbeRefusalLocked() is not null || (probe.Resync && !_state.Resyncing))
            {
                if (probe.Resync)
                {
                    _bitmap.Mark(probe.Offset, probe.Length);
                }

                return false;
            }

            if (!probe.Resync)
            {
                var dirty = new bool[probe.Chunks];
                for (var i = 0; i < dirty.Length; i++)
                {
                    var start = probe.Offset + ((long)i * probe.ChunkBytes);
                    var end = Math.Min(probe.Offset + probe.Length, start + probe.ChunkBytes);
                    for (var c = start >> DirtyBitmap.ChunkShift; c <= (end - 1) >> DirtyBitmap.ChunkShift && !dirty[i]; c++)
                    {
                        dirty[i] = _bitmap.IsSet(c);
                    }

                    // A checksum resync's probe took its range out of the bitmap; until it is settled the range may
                    // still differ on the peer, exactly like a dirty one.
                    foreach (var pending in _unsettledResyncProbes)
                    {
                        dirty[i] |= pending.Offset < end && start < pending.Offset + pending.Length;
                    }
                }

                probe.DirtyAtProbe = dirty;
            }
            else
            {
                _unsettledResyncProbes.Add(probe);
            }

            probe.Id = ++_nextProbeId;
            probe.SeqBefore = _nextSeq - 1;
            _probes.Add(probe.Id, probe);
            _probesSent++;
            _queue.Enqueue(new LinkItem { Probe = probe, EnqueuedAt = Stopwatch.GetTimestamp() });
            WakeShipperLocked();
            return true;
        }
    }

    /// <summary>The peer's answer to a probe. False when no such probe is outstanding or the hash count is wrong (a protocol violation).</summary>
    public bool OnChecksumReply(ulong id, ReadOnlySpan<byte> hashes)
    {
        lock (_gate)
        {
            if (!_probes.TryGetValue(id, out var probe) || hashes.Length != probe.Chunks * ChecksumProbe.HashBytes)
            {
                return false;
            }

            _probes.Remove(id);
            _probeReplyBytes += hashes.Length;
            probe.PeerHashes.TrySetResult(hashes.ToArray());
            return true;
        }
    }

    /// <summary>
    /// A resync probe was compared: its differing ranges go back to the bitmap (the data pass sends them), the rest
    /// counts as done. Ignored when a stream close already put the whole range back.
    /// </summary>
    public void SettleResyncProbe(ChecksumProbe probe, IReadOnlyList<(long Offset, long Length)> differing)
    {
        lock (_gate)
        {
            if (probe.Settled)
            {
                return;
            }

            probe.Settled = true;
            _unsettledResyncProbes.Remove(probe);
            long differ = 0;
            foreach (var (offset, length) in differing)
            {
                _bitmap.Mark(offset, length);
                differ += length;
            }

            if (differ > 0)
            {
                _holesMaySkip = false; // the peer holds data here: a hole on this side must go over as a zero range
            }

            // The equal chunks' bits are clear in memory now. On disk they may clear only once the peer's copy is
            // durable: the peer made it durable with the first fdatasync it ran after hashing, which a durable ack
            // of any record after the probe proves (a superset stays on disk until then, never less).
            _lastResyncSeq = Math.Max(_lastResyncSeq, probe.SeqBefore + 1);
            _resyncDone += probe.Length - differ;
            _probeEqualBytes += probe.Length - differ;
        }
    }

    /// <summary>
    /// Takes the next dirty run for a checksum probe, without wrapping to the start: ranges that a probe found
    /// different are marked behind the cursor and must be left to the data pass, not probed again.
    /// </summary>
    public bool TakeChecksumRun(int maxBytes, out long offset, out int length)
    {
        lock (_gate)
        {
            return TakeRunLocked(maxBytes, mayWrap: false, out offset, out length); // wrapped around: the probing pass is over
        }
    }

    /// <summary>The stream closed: unanswered probes fail, and unsettled resync ranges go back to the bitmap.</summary>
    private void ReturnProbesLocked()
    {
        foreach (var probe in _probes.Values)
        {
            probe.PeerHashes.TrySetException(new IOException("the replication stream ended before the peer answered the checksum request"));
        }

        _probes.Clear();
        foreach (var probe in _unsettledResyncProbes)
        {
            probe.Settled = true;
            _bitmap.Mark(probe.Offset, probe.Length);
        }

        _unsettledResyncProbes.Clear();
    }
}
