namespace BlockRepl.Core.Replication;

/// <summary>A read of the peer's image, for a diskless primary: queued in order with the records.</summary>
internal sealed class PeerRead(ulong id, long offset, int length)
{
    public ulong Id { get; } = id;

    public long Offset { get; } = offset;

    public int Length { get; } = length;

    public TaskCompletionSource<byte[]> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>Reads through the peer (a diskless primary, DRBD's on-io-error detach).</summary>
internal sealed partial class PeerLink
{
    /// <summary>The largest read one request carries (<see cref="LocksAndLimits.MaxPeerRead"/>).</summary>
    public const int MaxPeerRead = LocksAndLimits.MaxPeerRead;

    private readonly Dictionary<ulong, PeerRead> _pendingReads = [];
    private ulong _nextReadId;

    /// <summary>The peer announced it answers ReadRequest frames (set at each accepted handshake).</summary>
    public bool PeerServesReads { get; set; }

    /// <summary>
    /// Queues a read of the peer's image behind every record queued so far: the data it returns includes them.
    /// Fails at once when no stream can carry it.
    /// </summary>
    public Task<byte[]> RequestRead(long offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxPeerRead);
        lock (_gate)
        {
            if (!_state.Streaming || !_state.Accepted || !PeerServesReads)
            {
                return Task.FromException<byte[]>(new BlockImageException("the local disk is detached (diskless) and the peer cannot serve reads now", Native.LibC.EIO));
            }

            var read = new PeerRead(++_nextReadId, offset, length);
            _pendingReads[read.Id] = read;
            _queue.Enqueue(new LinkItem { Read = read, EnqueuedAt = System.Diagnostics.Stopwatch.GetTimestamp() });
            WakeShipperLocked();
            return read.Done.Task;
        }
    }

    /// <summary>The peer's answer to a read. False when no such read is outstanding or the length is wrong.</summary>
    public bool OnReadReply(ulong id, ReadOnlySpan<byte> data, string error)
    {
        PeerRead? read;
        lock (_gate)
        {
            if (!_pendingReads.Remove(id, out read))
            {
                return false;
            }
        }

        if (error.Length > 0)
        {
            read.Done.TrySetException(new BlockImageException($"the peer could not read {read.Offset}+{read.Length}: {error}", Native.LibC.EIO));
            return true;
        }

        if (data.Length != read.Length)
        {
            read.Done.TrySetException(new BlockImageException($"the peer answered a read of {read.Length} bytes with {data.Length}", Native.LibC.EIO));
            return false;
        }

        read.Done.TrySetResult(data.ToArray());
        return true;
    }

    private void FailReadsLocked()
    {
        foreach (var read in _pendingReads.Values)
        {
            read.Done.TrySetException(new BlockImageException("the replication stream ended before the peer answered a read (diskless)", Native.LibC.EIO));
        }

        _pendingReads.Clear();
    }
}
