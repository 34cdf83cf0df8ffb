namespace BlockRepl.Replication.Service;

/// <summary>Knobs of the replication stream, shared by both ends.</summary>
internal sealed record ReplicationSettings
{
    public const uint ProtocolVersion = 1;

    /// <summary>Largest uncompressed batch a receiver accepts (<see cref="LocksAndLimits.MaxBatchBytes"/>).</summary>
    public const int MaxBatchBytes = Core.LocksAndLimits.MaxBatchBytes;

    /// <summary>A sender stops adding records to a batch once it holds this much (<see cref="LocksAndLimits.SoftBatchBytes"/>).</summary>
    public const int SoftBatchBytes = Core.LocksAndLimits.SoftBatchBytes;

    /// <summary>The gRPC message limit on the replication port (<see cref="LocksAndLimits.MaxMessageBytes"/>).</summary>
    public const int MaxMessageBytes = Core.LocksAndLimits.MaxMessageBytes;

    /// <summary>A peer that sends nothing (not even a keepalive) for this long is dead; the stream ends.</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>A receiver makes applied writes durable at least this often, so dirty bits can clear.</summary>
    public TimeSpan DurableInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Reconnect backoff bounds.</summary>
    public TimeSpan MinBackoff { get; init; } = TimeSpan.FromMilliseconds(100);

    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Checksum resync (`serve --resync checksum`): as sync source, probe the peer's chunk hashes of each dirty run
    /// first and send only the chunks that differ. Needs a peer that announces the checksums feature.
    /// </summary>
    public bool ChecksumResync { get; init; }
}
