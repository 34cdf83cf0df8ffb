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
    public long MinBytesPerSecond { get; init; } = LocksAndLimits.ResyncMinBytesPerSecond;

    /// <summary>Application writes this recent make the resync yield.</summary>
    public TimeSpan BusyWindow { get; init; } = LocksAndLimits.ResyncBusyWindow;

    public int IdleRunBytes { get; init; } = LocksAndLimits.ResyncIdleRunBytes;

    public long IdleFillBytes { get; init; } = LocksAndLimits.ResyncIdleFillBytes;

    public int BusyRunBytes { get; init; } = LocksAndLimits.ResyncBusyRunBytes;

    public long BusyFillBytes { get; init; } = LocksAndLimits.ResyncBusyFillBytes;

    public static ResyncSettings Default { get; } = new();
}
