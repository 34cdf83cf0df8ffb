namespace BlockRepl.Core.Replication;

/// <summary>A read of the peer's image, for a diskless primary: queued in order with the records.</summary>
internal sealed class PeerRead(ulong id, long offset, int length)
{
    public ulong Id { get; } = id;

    public long Offset { get; } = offset;

    public int Length { get; } = length;

    public TaskCompletionSource<byte[]> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>
/// The reads through the peer that one <see cref="PeerLink"/> has outstanding (a diskless primary, DRBD's
/// on-io-error detach). Not thread-safe on its own: the owning link calls every member but
/// <see cref="Complete"/> under its lock.
/// </summary>
internal sealed class PeerReads
{
    private readonly Dictionary<ulong, PeerRead> _pending = [];
    private ulong _nextId;

    /// <summary>A new read, outstanding until the peer answers or the stream ends.</summary>
    public PeerRead Add(long offset, int length)
    {
        var read = new PeerRead(++_nextId, offset, length);
        _pending[read.Id] = read;
        return read;
    }

    /// <summary>Takes the outstanding read the peer answered; false when there is none with that id.</summary>
    public bool TryTake(ulong id, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out PeerRead? read) => _pending.Remove(id, out read);

    /// <summary>Completes a read taken by <see cref="TryTake"/> (outside the link's lock). False when the length is wrong.</summary>
    public static bool Complete(PeerRead read, ReadOnlySpan<byte> data, string error)
    {
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

    /// <summary>The stream ended: every outstanding read fails.</summary>
    public void FailAll()
    {
        foreach (var read in _pending.Values)
        {
            read.Done.TrySetException(new BlockImageException("the replication stream ended before the peer answered a read (diskless)", Native.LibC.EIO));
        }

        _pending.Clear();
    }
}
