namespace BlockRepl.Replication.Grpc;

/// <summary>Per-call options: an absolute deadline (UTC; null for none) and a cancellation token.</summary>
internal readonly record struct CallOptions(DateTime? Deadline = null, CancellationToken CancellationToken = default)
{
    /// <summary>A deadline <paramref name="timeout"/> from now.</summary>
    public static CallOptions WithTimeout(TimeSpan timeout, CancellationToken cancellationToken = default) =>
        new(DateTime.UtcNow + timeout, cancellationToken);
}
