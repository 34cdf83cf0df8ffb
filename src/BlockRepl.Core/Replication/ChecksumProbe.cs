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
