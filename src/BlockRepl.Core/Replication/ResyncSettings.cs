namespace BlockRepl.Core.Replication;

/// <summary>
/// The resync rate controller's knobs (DRBD's c-max-rate, c-min-rate and c-fill-target, simplified).
/// </summary>
/// <remarks>
/// Resync records share the stream with the application's writes, in order, so every byte of resync data
/// queued in front of a write adds to that write's latency. The controller therefore distinguishes two regimes.
/// Idle (no application write for <see cref="BusyWindow"/>): large runs, up to <see cref="IdleFillBytes"/> queued
/// or in flight, capped only by <see cref="MaxBytesPerSecond"/>. Busy: small runs, at most
/// <see cref="BusyFillBytes"/> in front of a write, paced at <see cref="MinBytesPerSecond"/> so the resync still
/// advances at that floor while the application keeps its latency.
/// </remarks>
public sealed record ResyncSettings
{
    /// <summary>Cap on the resync rate, bytes per second (0: none).</summary>
    public long MaxBytesPerSecond { get; init; }

    /// <summary>The rate the resync keeps while the application writes, bytes per second (0: no pacing).</summary>
    public long MinBytesPerSecond { get; init; } = 64L << 20;

    /// <summary>Application writes this recent make the resync yield.</summary>
    public TimeSpan BusyWindow { get; init; } = TimeSpan.FromMilliseconds(100);

    public int IdleRunBytes { get; init; } = 1 << 20;

    public long IdleFillBytes { get; init; } = 16L << 20;

    public int BusyRunBytes { get; init; } = 64 << 10;

    public long BusyFillBytes { get; init; } = 64 << 10;

    public static ResyncSettings Default { get; } = new();
}
