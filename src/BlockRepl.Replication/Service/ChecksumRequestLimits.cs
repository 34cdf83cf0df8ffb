using BlockRepl.Core;
using BlockRepl.Replication.V1;

namespace BlockRepl.Replication.Service;

/// <summary>The bounds a receiver enforces on a ChecksumRequest (replication.proto), checked before any read.</summary>
internal static class ChecksumRequestLimits
{
    public const int MinChunk = 4096;

    public const int MaxChunk = Volume.MaxProbeBytes;

    /// <summary>Largest range one request covers: the receiver reads it into one buffer (so at most 1024 chunks of the smallest size).</summary>
    public const int MaxLength = LocksAndLimits.MaxChecksumRequestBytes;

    /// <summary>Replies waiting for the ack loop before the apply loop waits too.</summary>
    public const int MaxQueuedReplies = LocksAndLimits.MaxQueuedChecksumReplies;

    /// <summary>Why the request is out of bounds, or null.</summary>
    public static string? Check(ChecksumRequest request, long volumeSize)
    {
        if (request.ChunkBytes < MinChunk || request.ChunkBytes > MaxChunk)
        {
            return $"chunk_bytes {request.ChunkBytes} is outside {MinChunk}..{MaxChunk}";
        }

        if (request.Length == 0 || request.Length > MaxLength)
        {
            return $"length {request.Length} is outside 1..{MaxLength}";
        }

        if (request.Offset > (ulong)volumeSize || request.Length > (ulong)volumeSize - request.Offset)
        {
            return $"{request.Offset}+{request.Length} is outside the {volumeSize}-byte volume";
        }

        return null;
    }
}
